// The dashboard (/dashboard) and the <tollgate-usage> widget in Debian's Chromium, driven by
// Playwright (playwright-core: it never downloads a browser), with no network beyond loopback.
// usage: node dashboard.mjs <config.json>  (written by tests/api/dashboard.rs: the server's base URL,
// tokens, organization ids, the screenshot directory)
//
// Checks, in order: the organization's view shows the API's numbers in its bars; a recording through
// the API changes the bar and the alerts feed within a second, without a reload and without layout
// shift; the first view's transfer is at most 150 KB; the page fits 360 px and is keyboard-reachable;
// a tenant's token shows nothing of another organization and cannot reach the platform view; the
// platform view lists the organizations at or above 80% in order, sorts, streams every
// organization's alerts live and opens any organization; the widget renders and updates live in a
// plain page from another origin. Prints `OK ...` lines; exits 1 on the first failure, 3 without
// Chromium.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { base, shots, orgs, tokens } = config;
const executablePath =
  process.env.CHROMIUM ||
  ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => fs.existsSync(p));
if (!executablePath) {
  console.error('SKIP no chromium found (apt-get install -y chromium)');
  process.exit(3);
}
fs.mkdirSync(shots, { recursive: true });

class Failure extends Error {}
function check(cond, message) {
  if (!cond) throw new Failure(message);
}
const ok = (m) => console.log(`OK ${m}`);

async function gql(token, query, variables = {}) {
  const resp = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await resp.json();
  if (body.errors) throw new Failure(`API errors: ${JSON.stringify(body.errors)}`);
  return body.data;
}
const record = (token, metric, quantity) =>
  gql(token, 'mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted usage { used } alerts { kind } } }', {
    i: { metric, quantity },
  });
const USAGE =
  'query($id: ID) { organization(id: $id) { name usage { metrics { metric { code } used allowance utilizationPct } } } }';

/** "12345.5" -> "12,345.5", as the dashboard shows decimals. */
const grouped = (s) => (s == null ? '∞' : s.replace(/^(-?)(\d+)/, (_, sign, d) => sign + d.replace(/\B(?=(\d{3})+(?!\d))/g, ',')));

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-proxy-server',
    '--disable-dev-shm-usage',
  ],
});

/** The page in use, whose text and screenshot a failure leaves behind. */
let current = null;

/** A fresh context that refuses every request off loopback and records page errors. */
async function newPage({ width = 1280, height = 900 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, serviceWorkers: 'block' });
  const offLoopback = [];
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (['data:', 'blob:'].includes(u.protocol) || ['127.0.0.1', 'localhost'].includes(u.hostname)) {
      return route.continue();
    }
    offLoopback.push(u.toString());
    return route.abort();
  });
  const page = await context.newPage();
  current = page;
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  // Everything the page hears from the server, HTTP bodies and WebSocket frames.
  const heard = [];
  page.on('response', async (r) => {
    if (r.url().includes('/graphql')) heard.push(await r.text().catch(() => ''));
  });
  page.on('websocket', (ws) => ws.on('framereceived', (f) => heard.push(String(f.payload))));
  const done = async () => {
    check(!offLoopback.length, `requests beyond loopback: ${offLoopback.join(', ')}`);
    // A refused WebSocket subscription or a 4xx shows in the console as an error too; ignore those.
    const real = errors.filter((e) => !/Failed to load resource|WebSocket/.test(e));
    check(!real.length, `page errors: ${real.join('; ')}`);
    await context.close();
  };
  return { page, heard, done };
}

const barsOf = (root) =>
  root.$$eval('.bar', (els) =>
    els.map((e) => ({
      code: e.dataset.metric,
      used: e.dataset.used,
      allowance: e.dataset.allowance,
      state: e.dataset.state,
      usedText: e.querySelector('.bar__used')?.textContent,
      allowanceText: e.querySelector('.bar__allowance')?.textContent,
    })),
  );

function compareBars(bars, api, where) {
  check(bars.length === api.length, `${where}: ${bars.length} bars for ${api.length} metrics`);
  for (const m of api) {
    const bar = bars.find((b) => b.code === m.metric.code);
    check(bar, `${where}: no bar for ${m.metric.code}`);
    check(bar.used === m.used, `${where}: ${m.metric.code} shows used ${bar.used}, the API says ${m.used}`);
    check(
      bar.allowance === (m.allowance ?? ''),
      `${where}: ${m.metric.code} shows allowance ${bar.allowance}, the API says ${m.allowance}`,
    );
    check(bar.usedText === grouped(m.used), `${where}: ${m.metric.code} reads "${bar.usedText}" for ${m.used}`);
    check(
      bar.allowanceText === grouped(m.allowance),
      `${where}: ${m.metric.code} reads "${bar.allowanceText}" for ${m.allowance}`,
    );
  }
}

async function orgView() {
  const { page, heard, done } = await newPage();
  await page.goto(`${base}/dashboard#token=${tokens.acmeAdmin}`, { waitUntil: 'load' });
  await page.waitForSelector('.bar[data-metric="bookings"]', { timeout: 20000 });
  check(!page.url().includes('token='), 'the token stayed in the address bar');

  // The bars' numbers are the API's.
  const api = (await gql(tokens.acmeAdmin, USAGE)).organization.usage.metrics;
  compareBars(await barsOf(page), api, 'organization view');
  const bookings = api.find((m) => m.metric.code === 'bookings');
  check((await page.$eval('.bar[data-metric="bookings"]', (e) => e.dataset.state)) === 'near', 'bookings at 85% is not "near"');
  check(/\d+ days? left/.test(await page.textContent('[data-testid="period"]')), 'no days left in the period');
  check((await page.$$('.chart')).length === api.length, 'not one chart per metric');
  check((await page.$$eval('.chart:first-child rect', (r) => r.length)) === 12, 'the chart does not show 12 periods');
  ok(`organization view: ${api.length} bars equal the API's (bookings ${bookings.used} of ${bookings.allowance})`);

  // First view's transfer: the page and everything it loaded, as the network counted it.
  const transfer = await page.evaluate(() =>
    [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]
      .filter((e) => !e.name.includes('/graphql'))
      .reduce((n, e) => n + e.transferSize, 0),
  );
  check(transfer > 0 && transfer <= 150 * 1024, `first view transferred ${transfer} B (limit 150 KB)`);
  ok(`first view transferred ${transfer} B (page, script, stylesheet; no compression)`);

  // Live: record through the API; the bar and the alerts feed change within a second, with no
  // reload (a marker on window survives) and no layout shift.
  await page.evaluate(() => {
    window.__sameDocument = true;
    window.__shift = 0;
    window.__shifted = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        // The alerts feed is a box of fixed size that scrolls: a new alert on top moves the older
        // ones inside it, and nothing outside it. Every other move counts.
        const outside = (e.sources ?? []).filter((s) => !s.node?.closest?.('[data-testid="alerts"]'));
        if (!outside.length && e.sources?.length) continue;
        window.__shift += e.value;
        for (const s of outside) {
          const n = s.node?.nodeType === 3 ? s.node.parentElement : s.node;
          window.__shifted.push(n?.className || n?.nodeName);
        }
      }
    }).observe({ type: 'layout-shift', buffered: false });
  });
  await page.waitForSelector('.live--live', { timeout: 10000 });
  const alertsBefore = await page.$$eval('[data-testid="alerts"] [data-alert-id]', (a) => a.length);
  const answered = await record(tokens.acmeService, 'bookings', '20');
  const t0 = Date.now();
  const expected = answered.recordUsage.usage.used;
  check(answered.recordUsage.alerts.some((a) => a.kind === 'LIMIT_EXCEEDED'), 'the recording raised no LIMIT_EXCEEDED');
  await page.waitForFunction(
    ([used, before]) =>
      document.querySelector('.bar[data-metric="bookings"]')?.dataset.used === used &&
      document.querySelectorAll('[data-testid="alerts"] [data-kind="LIMIT_EXCEEDED"]').length > 0 &&
      document.querySelectorAll('[data-testid="alerts"] [data-alert-id]').length > before,
    [expected, alertsBefore],
    { timeout: 5000, polling: 'raf' },
  );
  const took = Date.now() - t0;
  check(took <= 1000, `the bar and the feed changed ${took} ms after the mutation answered (limit 1000)`);
  check(await page.evaluate(() => window.__sameDocument === true), 'the page reloaded');
  check((await page.$eval('.bar[data-metric="bookings"]', (e) => e.dataset.state)) === 'exceeded', 'the bar is not "exceeded"');
  await page.waitForTimeout(400); // the bar's transition
  const shift = await page.evaluate(() => window.__shift);
  const moved = await page.evaluate(() => window.__shifted.join(', '));
  check(shift === 0, `layout shifted by ${shift} when the numbers changed (${moved})`);
  ok(`live: bar ${expected} and LIMIT_EXCEEDED in the feed ${took} ms after the mutation answered; no reload, no layout shift`);
  await page.screenshot({ path: path.join(shots, 'dashboard-org.png'), fullPage: true });

  // Keyboard: Tab reaches the navigation, the feed and the sign-out button, in that document order.
  const reached = new Set();
  for (let i = 0; i < 30; i++) {
    await page.keyboard.press('Tab');
    reached.add(await page.evaluate(() => {
      const e = document.activeElement;
      return e ? `${e.tagName}.${e.className}`.trim() : '';
    }));
  }
  check([...reached].some((r) => r.startsWith('BUTTON.link')), `Tab never reaches "Sign out": ${[...reached].join(', ')}`);
  check([...reached].some((r) => r.startsWith('DIV.feed')), 'Tab never reaches the alerts feed');
  ok(`keyboard: ${reached.size} distinct stops reached with Tab`);

  // 360 px wide: nothing wider than the screen.
  await page.setViewportSize({ width: 360, height: 800 });
  await page.waitForTimeout(100);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 360, `at 360 px the page is ${wide} px wide`);
  await page.screenshot({ path: path.join(shots, 'dashboard-org-360.png'), fullPage: true });
  ok('360 px: no horizontal scrolling');

  // Nothing of another organization reached this tenant's page.
  check(!heard.some((h) => h.includes(orgs.bravo) || h.includes('BRAVO')), 'the tenant heard of another organization');
  await done();
}

async function tenantWalls() {
  const { page, heard, done } = await newPage();
  await page.goto(`${base}/dashboard#token=${tokens.acmeAdmin}`, { waitUntil: 'load' });
  await page.waitForSelector('.bar', { timeout: 20000 });

  // Another organization's view by its id: refused, exactly as a missing one.
  await page.goto(`${base}/dashboard#/org/${orgs.bravo}`);
  await page.waitForSelector('.notice--error', { timeout: 10000 });
  check(/No organization with this id/.test(await page.textContent('main')), 'another organization was not refused');
  check(!(await page.$('.bar')), 'bars shown for another organization');
  const missing = '00000000-0000-7000-8000-000000000000';
  await page.goto(`${base}/dashboard#/org/${missing}`);
  await page.waitForFunction(() => document.querySelector('.notice--error'));
  ok("a tenant's token opening another organization's view: refused like a missing one");

  // The platform view.
  await page.goto(`${base}/dashboard#/platform`);
  await page.waitForSelector('.notice--error', { timeout: 10000 });
  check(/only for the platform team/.test(await page.textContent('main')), 'the platform view was not refused');
  check(!(await page.$('[data-testid="near-table"]')), 'the platform table rendered for a tenant');
  check(!(await page.$('a[href="#/platform"]')), 'a tenant sees a link to the platform view');
  // And the API behind it refuses the tenant too.
  const resp = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${tokens.acmeAdmin}` },
    body: JSON.stringify({ query: '{ usageSummaries(first: 100) { nodes { organization { id } } } organizations { totalCount } }' }),
  });
  const text = await resp.text();
  check(!text.includes(orgs.bravo) && /errors/.test(text), `the platform query answered a tenant: ${text}`);
  check(!heard.some((h) => h.includes(orgs.bravo) || h.includes('BRAVO')), 'the tenant heard of another organization');
  ok("a tenant's token cannot reach the platform view; nothing of another organization reached its page");
  await done();
}

async function platformView() {
  const { page, done } = await newPage();
  await page.goto(`${base}/dashboard#token=${tokens.platform}`, { waitUntil: 'load' });
  await page.waitForSelector('[data-testid="near-table"] tbody tr', { timeout: 20000 });

  // At or above 80%, highest first, as the API computes them.
  const data = await gql(
    tokens.platform,
    '{ usageSummaries(minUtilizationPct: 80, first: 100) { nodes { organization { id name } metrics { utilizationPct } } } }',
  );
  // Highest first (lowest first once sorted the other way); ties by name either way.
  const peaks = data.usageSummaries.nodes.map((n) => ({
    id: n.organization.id,
    name: n.organization.name.toLowerCase(),
    peak: Math.max(...n.metrics.map((m) => m.utilizationPct ?? -1)),
  }));
  const byName = (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const expected = [...peaks].sort((a, b) => b.peak - a.peak || byName(a, b)).map((n) => n.id);
  const ascending = [...peaks].sort((a, b) => a.peak - b.peak || byName(a, b)).map((n) => n.id);
  const shown = async () => page.$$eval('[data-testid="near-table"] tbody tr', (rows) => rows.map((r) => r.dataset.orgId));
  check(expected.length >= 3, `expected three organizations at or above 80%, the API has ${expected.length}`);
  check(JSON.stringify(await shown()) === JSON.stringify(expected), `order ${await shown()} is not ${expected}`);
  check(!(await shown()).includes(orgs.delta), 'an organization below 80% is listed');
  ok(`platform view: ${expected.length} organizations at or above 80%, highest first (${peaks.map((p) => p.peak).sort((a, b) => b - a).join(', ')})`);

  // Sortable, from the keyboard: focus the column's button and press Enter.
  await page.focus('button[data-sort="utilization"]');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('th[aria-sort="ascending"]'));
  check(JSON.stringify(await shown()) === JSON.stringify(ascending), `Enter on the column did not sort lowest first: ${await shown()}`);
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('th[aria-sort="descending"]'));
  ok('sorting by utilization from the keyboard');
  await page.screenshot({ path: path.join(shots, 'dashboard-platform.png'), fullPage: true });

  // The live alert stream of every organization: delta crosses 80%, its alert streams in and the
  // list gains it, without a reload.
  await page.waitForSelector('.live--live', { timeout: 10000 });
  await page.evaluate(() => (window.__sameDocument = true));
  const answered = await record(tokens.deltaService, 'bookings', '75');
  const t0 = Date.now();
  check(answered.recordUsage.alerts.some((a) => a.kind === 'NEAR_LIMIT'), 'delta raised no NEAR_LIMIT');
  await page.waitForFunction(
    () => [...document.querySelectorAll('#stream [data-kind="NEAR_LIMIT"]')].some((a) => a.textContent.includes('DELTA')),
    null,
    { timeout: 5000, polling: 'raf' },
  );
  const took = Date.now() - t0;
  check(took <= 1000, `delta's alert reached the stream after ${took} ms`);
  await page.waitForFunction((id) => document.querySelector(`[data-testid="near-table"] tr[data-org-id="${id}"]`), orgs.delta, {
    timeout: 5000,
  });
  check(await page.evaluate(() => window.__sameDocument === true), 'the page reloaded');
  ok(`live stream: delta's NEAR_LIMIT after ${took} ms, and delta joined the list`);
  await page.screenshot({ path: path.join(shots, 'dashboard-platform-live.png'), fullPage: true });

  // Any organization by a click: its view, with its numbers.
  await page.click(`[data-testid="near-table"] tr[data-org-id="${orgs.bravo}"] a`);
  await page.waitForSelector(`.org[data-org-id="${orgs.bravo}"] .bar`, { timeout: 10000 });
  const api = (await gql(tokens.platform, USAGE, { id: orgs.bravo })).organization.usage.metrics;
  compareBars(await barsOf(page), api, "the platform's view of bravo");
  ok("a click opens bravo's view with the API's numbers");

  await page.setViewportSize({ width: 360, height: 800 });
  await page.goto(`${base}/dashboard#/platform`);
  await page.waitForSelector('[data-testid="near-table"] tbody tr', { timeout: 10000 });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 360, `the platform view at 360 px is ${wide} px wide`);
  await page.screenshot({ path: path.join(shots, 'dashboard-platform-360.png'), fullPage: true });
  ok('platform view at 360 px: no horizontal scrolling');
  await done();
}

async function widget() {
  // A plain page on another origin (another port), two lines of HTML.
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>Host app</title></head>
<body style="font-family: sans-serif; max-width: 28rem; margin: 2rem">
<h1>Your usage</h1>
<script src="${base}/dashboard/tollgate-usage.js"></script>
<tollgate-usage token="${tokens.bravoViewer}" metrics="bookings,staff"></tollgate-usage>
</body></html>`;
  const server = http.createServer((_, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const host = `http://127.0.0.1:${server.address().port}`;
  try {
    const { page, done } = await newPage({ width: 800, height: 600 });
    await page.goto(`${host}/`, { waitUntil: 'load' });
    const widget = page.locator('tollgate-usage');
    await widget.locator('.bar').first().waitFor({ timeout: 20000 });
    const shown = await widget.locator('.bar').evaluateAll((els) => els.map((e) => [e.dataset.metric, e.dataset.used]));
    const api = (await gql(tokens.bravoViewer, USAGE)).organization.usage.metrics;
    const want = ['bookings', 'staff'].map((c) => [c, api.find((m) => m.metric.code === c).used]);
    check(JSON.stringify(shown) === JSON.stringify(want), `the widget shows ${JSON.stringify(shown)}, the API ${JSON.stringify(want)}`);
    ok(`widget on ${host}: bookings and staff, in that order, equal to the API`);

    await page.waitForTimeout(300); // subscribed
    const answered = await record(tokens.bravoService, 'bookings', '1');
    const t0 = Date.now();
    await widget
      .locator(`.bar[data-metric="bookings"][data-used="${answered.recordUsage.usage.used}"]`)
      .waitFor({ timeout: 5000 });
    const took = Date.now() - t0;
    check(took <= 1000, `the widget changed ${took} ms after the mutation answered`);
    ok(`widget live: ${took} ms after the mutation answered`);
    await widget.screenshot({ path: path.join(shots, 'widget.png') });
    await done();

    // Refusals reach the host page, once each, instead of a "Loading" that never ends: a token
    // the server refuses, an endpoint that is not http(s), an unknown metric.
    const refused = await newPage({ width: 800, height: 600 });
    await refused.page.goto(`${host}/`, { waitUntil: 'load' });
    const events = await refused.page.evaluate(async (src) => {
      const seen = [];
      document.body.innerHTML = '';
      const s = document.createElement('script');
      s.src = src;
      await new Promise((r) => { s.onload = r; document.head.append(s); });
      for (const attrs of [{ token: 'nope' }, { token: 'x', endpoint: 'javascript:alert(1)' }]) {
        const el = document.createElement('tollgate-usage');
        el.addEventListener('tollgate-error', (e) => seen.push([attrs.token, e.detail]));
        for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
        document.body.append(el);
      }
      await new Promise((r) => setTimeout(r, 3000));
      return seen;
    }, `${base}/dashboard/tollgate-usage.js`);
    check(events.length === 2, `the host page heard ${JSON.stringify(events)}`);
    check(/token/i.test(events.find((e) => e[0] === 'nope')?.[1] ?? ''), `a refused token: ${JSON.stringify(events)}`);
    check(/http/.test(events.find((e) => e[0] === 'x')?.[1] ?? ''), `a javascript: endpoint: ${JSON.stringify(events)}`);
    ok(`widget refusals reach the host page once each: ${JSON.stringify(events.map((e) => e[1]))}`);
    await refused.done();
  } finally {
    server.close();
  }
}

let code = 0;
try {
  await orgView();
  await tenantWalls();
  await platformView();
  await widget();
  console.log(`OK screenshots in ${shots}`);
} catch (e) {
  console.error(e instanceof Failure ? `FAIL ${e.message}` : e);
  if (current && !current.isClosed()) {
    console.error(`the page said: ${(await current.textContent('body').catch(() => '')).slice(0, 2000)}`);
    await current.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  }
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);

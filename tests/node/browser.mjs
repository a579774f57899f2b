// GraphiQL at / in headless Chromium, with no network beyond loopback: it must render, run a query,
// and show the answer; a screenshot is checked to be non-blank.
// usage: node browser.mjs <http://127.0.0.1:port> <token> <screenshot.png>
import fs from 'node:fs';
import puppeteer from 'puppeteer-core';
import { PNG } from 'pngjs';

const [base, token, shot] = process.argv.slice(2);
if (!shot) {
  console.error('usage: node browser.mjs <base> <token> <screenshot.png>');
  process.exit(2);
}
const executablePath =
  process.env.CHROMIUM ||
  ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) =>
    fs.existsSync(p),
  );
if (!executablePath) {
  console.error('SKIP no chromium found (apt-get install -y chromium)');
  process.exit(3);
}

function fail(message) {
  console.error(`FAIL ${message}`);
  process.exit(1);
}

const browser = await puppeteer.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-proxy-server', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const offLoopback = [];
  await page.setRequestInterception(true);
  page.on('request', (req) => {
    const u = new URL(req.url());
    if (u.protocol === 'data:' || u.protocol === 'blob:' || ['127.0.0.1', 'localhost'].includes(u.hostname)) {
      req.continue();
    } else {
      offLoopback.push(req.url());
      req.abort();
    }
  });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));

  const query = '{ viewer { userId role organization { name } } }';
  await page.goto(`${base}/?query=${encodeURIComponent(query)}#token=${token}`, {
    waitUntil: 'networkidle0',
    timeout: 30000,
  });
  await page.waitForSelector('.graphiql-execute-button', { timeout: 20000 });
  await page.click('.graphiql-execute-button');
  await page.waitForFunction(
    () => (document.querySelector('.graphiql-response')?.innerText || '').includes('userId'),
    { timeout: 20000 },
  );
  const answer = await page.$eval('.graphiql-response', (el) => el.innerText);
  if (!answer.includes('"role": "ADMIN"')) fail(`unexpected answer: ${answer}`);
  if (page.url().includes('token=')) fail('the token stayed in the address bar');
  await page.screenshot({ path: shot });

  const png = PNG.sync.read(fs.readFileSync(shot));
  const colors = new Set();
  let nonWhite = 0;
  for (let i = 0; i < png.data.length; i += 4) {
    const [r, g, bl] = [png.data[i], png.data[i + 1], png.data[i + 2]];
    colors.add((r << 16) | (g << 8) | bl);
    if (r < 240 || g < 240 || bl < 240) nonWhite++;
  }
  const share = nonWhite / (png.width * png.height);
  if (colors.size < 20 || share < 0.01) fail(`blank screenshot: ${colors.size} colors, ${(share * 100).toFixed(2)}% ink`);
  if (offLoopback.length) fail(`requests beyond loopback: ${offLoopback.join(', ')}`);
  if (pageErrors.length) fail(`page errors: ${pageErrors.join('; ')}`);
  console.log(
    `OK GraphiQL rendered and ran a query; screenshot ${png.width}x${png.height}, ${colors.size} colors, ${(share * 100).toFixed(1)}% ink`,
  );
} finally {
  await browser.close();
}

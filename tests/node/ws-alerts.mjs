// A real graphql-ws client subscribes to limit alerts with a token in connection_init; HTTP mutations
// then record past 80% and past 100% of the allowance.
// usage: node ws-alerts.mjs <http://host:port> <viewer token A> <service token A> <viewer token B> <org A>
// Client A must receive NEAR_LIMIT then LIMIT_EXCEEDED for its own organization; client B (another
// tenant) must receive nothing. Prints how long each alert took to arrive after the mutation answered.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [base, viewerA, serviceA, viewerB, orgA] = process.argv.slice(2);
if (!orgA) {
  console.error('usage: node ws-alerts.mjs <base> <viewerA> <serviceA> <viewerB> <orgA>');
  process.exit(2);
}
const wsUrl = base.replace(/^http/, 'ws') + '/graphql';
const ALERTS = 'subscription { usageAlerts { kind metric { code } organization { id } utilizationPct } }';

function fail(message) {
  console.error(`FAIL ${message}`);
  process.exit(1);
}

// `ready` resolves once the socket is acknowledged.
function subscriber(name, token) {
  const received = [];
  let notify = () => {};
  let connected;
  const ready = new Promise((resolve) => (connected = resolve));
  const client = createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: 0,
    on: { connected: () => connected() },
  });
  client.subscribe(
    { query: ALERTS },
    {
      next: (result) => {
        if (result.errors) fail(`${name} got errors: ${JSON.stringify(result.errors)}`);
        received.push({ alert: result.data.usageAlerts, at: performance.now() });
        notify();
      },
      error: (err) => fail(`${name} subscription failed: ${JSON.stringify(err?.reason ?? err)}`),
      complete: () => {},
    },
  );
  const next = (timeoutMs) =>
    new Promise((resolve) => {
      const seen = received.length;
      const timer = setTimeout(() => resolve(null), timeoutMs);
      notify = () => {
        if (received.length > seen) {
          clearTimeout(timer);
          resolve(received[seen]);
        }
      };
      notify();
    });
  return { client, received, ready, next };
}

async function record(quantity) {
  const resp = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json',
      authorization: `Bearer ${serviceA}`,
    },
    body: JSON.stringify({
      query: `mutation { recordUsage(input: {metric: "bookings", quantity: "${quantity}"}) { accepted } }`,
    }),
  });
  const body = await resp.json();
  if (!body.data?.recordUsage?.accepted) fail(`recording failed: ${JSON.stringify(body)}`);
  return performance.now();
}

// Receivers of the server's event bus, from its Prometheus metrics.
async function listeners() {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('tollgate_bus_listeners '));
  return line ? Number(line.split(' ')[1]) : 0;
}

// Both subscriptions listen before anything is recorded (a fixed pause is a guess a loaded machine
// can lose).
const before = await listeners();
const a = subscriber('A', viewerA);
const b = subscriber('B', viewerB);
await Promise.all([a.ready, b.ready]);
const deadline = performance.now() + 20000;
while ((await listeners()) < before + 2) {
  if (performance.now() > deadline) fail('the subscriptions never started listening');
  await new Promise((r) => setTimeout(r, 10));
}

const latencies = [];
for (const [quantity, kind] of [['85', 'NEAR_LIMIT'], ['20', 'LIMIT_EXCEEDED']]) {
  const seen = a.received.length;
  const answered = await record(quantity);
  const got = a.received[seen] ?? (await a.next(5000));
  if (!got) fail(`A did not receive ${kind}`);
  if (got.alert.kind !== kind) fail(`A expected ${kind}, got ${got.alert.kind}`);
  if (got.alert.organization.id !== orgA) fail(`A received another organization's alert`);
  latencies.push(`${kind} ${Math.max(0, got.at - answered).toFixed(2)} ms`);
}
await new Promise((r) => setTimeout(r, 500));
if (a.received.length !== 2) fail(`A received ${a.received.length} alerts, expected 2`);
if (b.received.length !== 0) fail(`B received another tenant's alerts: ${JSON.stringify(b.received)}`);
console.log(`alert delivery after the mutation answered: ${latencies.join(', ')}`);
console.log('OK graphql-ws: A received NEAR_LIMIT then LIMIT_EXCEEDED; B received nothing');
await a.client.dispose();
await b.client.dispose();
process.exit(0);

// The graphql-http server audit against a running Tollgate.
// usage: node audit.mjs <http://host:port/graphql> <token>
// Prints every audit, then a summary line `AUDIT {"must_failures":N,"should_failures":M,...}`; exits 1
// when a MUST audit fails. The token is sent as a real client would (the API requires one for
// anything but introspection fields).
import { serverAudits } from 'graphql-http';

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node audit.mjs <url> <token>');
  process.exit(2);
}

const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers || {});
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
};

const results = [];
for (const audit of serverAudits({ url, fetchFn })) {
  const result = await audit.fn();
  results.push({ id: audit.id, name: audit.name, status: result.status, reason: result.reason });
  const mark = result.status === 'ok' ? 'ok  ' : 'FAIL';
  console.log(`${mark} ${audit.name}${result.status === 'ok' ? '' : ` -- ${result.reason}`}`);
}
// Classified by the requirement level in each audit's name (MUST, SHOULD, MAY).
const failed = results.filter((r) => r.status !== 'ok');
const must = failed.filter((r) => r.name.startsWith('MUST'));
const should = failed.filter((r) => r.name.startsWith('SHOULD'));
const may = failed.filter((r) => r.name.startsWith('MAY'));
console.log(
  `AUDIT ${JSON.stringify({
    audits: results.length,
    must_failures: must.length,
    should_failures: should.length,
    may_failures: may.length,
    should: should.map((r) => r.name),
  })}`,
);
process.exit(must.length === 0 ? 0 : 1);

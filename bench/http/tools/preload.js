// node tools/preload.js <base url> <prefix> <n>
// Completes keys <prefix>1 .. <prefix><n> through the server (the same body as
// wrk's), 16 at a time, then asks for each once more and checks that it
// replays.  Prints one line: statuses of the first and the second pass.
import { BODY, inParallel, makeClient } from './client.js';

const [base, prefix, nText] = process.argv.slice(2);
const n = Number(nText);
const client = makeClient(base, { sockets: 16 });
const hist = (h, s) => { h[s] = (h[s] ?? 0) + 1; };
const first = {};
const second = {};
let replayed = 0;
await inParallel(n, 16, async (i) => hist(first, (await client.post(`${prefix}${i + 1}`, BODY)).status));
await inParallel(n, 16, async (i) => {
  const r = await client.post(`${prefix}${i + 1}`, BODY);
  hist(second, r.status);
  if (r.replayed) replayed++;
});
client.close();
const fmt = (h) => Object.entries(h).map(([s, c]) => `${s}:${c}`).join(' ');
console.log(`first ${fmt(first)}; again ${fmt(second)} (${replayed} marked Idempotent-Replayed)`);
process.exit(first['201'] === n && second['201'] === n ? 0 : 1);

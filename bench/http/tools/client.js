// A small HTTP client for the tools: POST /payments with keep-alive sockets.
import http from 'node:http';

export const BODY = { amount: 500, to: 'acct_42' };

export function makeClient(base, { sockets = 64 } = {}) {
  const url = new URL(base);
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets });
  function post(key, body, { timeoutMs = 30000 } = {}) {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const headers = { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) };
    if (key !== undefined) headers['Idempotency-Key'] = key;
    return new Promise((resolve) => {
      const req = http.request(
        { host: url.hostname, port: url.port, path: '/payments', method: 'POST', headers, agent, timeout: timeoutMs },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () =>
            resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8'), replayed: res.headers['idempotent-replayed'] === 'true' }),
          );
          res.on('error', (err) => resolve({ status: 0, text: String(err), replayed: false }));
        },
      );
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (err) => resolve({ status: 0, text: String(err), replayed: false }));
      req.end(text);
    });
  }
  return { post, close: () => agent.destroy() };
}

// Run fn(i) for i in 0..n-1, at most `width` at a time.
export async function inParallel(n, width, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(width, n) }, async () => {
    while (next < n) await fn(next++);
  });
  await Promise.all(workers);
}

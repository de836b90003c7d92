// An HTTP proxy on 127.0.0.1 that loses responses: it forwards each request to
// the service, waits for the complete response (so the service has done the
// work and committed), and then, for a share of requests, destroys the
// client's socket instead of forwarding it.  The client sees a reset
// connection and cannot tell whether its payment happened: the situation the
// Idempotency-Key header exists for.
import http from 'node:http';

const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade'];

export async function startDroppingProxy({ targetPort, dropRate, random = Math.random }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const stats = { requests: 0, forwarded: 0, dropped: 0, upstreamErrors: 0 };

  const server = http.createServer((req, res) => {
    stats.requests++;
    const headers = { ...req.headers };
    for (const h of HOP_BY_HOP) delete headers[h];
    const upstream = http.request(
      { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers, agent },
      (upRes) => {
        const chunks = [];
        upRes.on('data', (chunk) => chunks.push(chunk));
        upRes.on('end', () => {
          if (random() < dropRate) {
            stats.dropped++;
            req.socket.destroy();
            return;
          }
          stats.forwarded++;
          const out = { ...upRes.headers };
          for (const h of HOP_BY_HOP) delete out[h];
          res.writeHead(upRes.statusCode, out);
          res.end(Buffer.concat(chunks));
        });
      },
    );
    upstream.on('error', () => {
      stats.upstreamErrors++;
      req.socket.destroy();
    });
    req.pipe(upstream);
  });
  server.on('clientError', (_err, socket) => socket.destroy());

  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stats,
    close() {
      agent.destroy();
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

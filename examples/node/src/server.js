// Run the payments API:  PORT=8080 node src/server.js
// The database comes from the usual libpq variables (PGHOST, PGPORT, PGUSER,
// PGDATABASE, PGPASSWORD); it needs CREATE EXTENSION idempotency.
import pg from 'pg';
import { createApp, SCHEMA } from './app.js';

const pool = new pg.Pool({
  max: Number(process.env.PGPOOL_MAX ?? 10),
  connectionTimeoutMillis: 5000,
  // Bound every statement and lock wait, so a stuck request cannot hold a
  // pooled connection forever.
  options: '-c statement_timeout=10s -c lock_timeout=5s',
  application_name: 'payments-example',
});
pool.on('error', (err) => console.error('idle pool client error:', err.message));

await pool.query(SCHEMA);
const server = createApp({ pool });
const port = Number(process.env.PORT ?? 8080);
const host = process.env.HOST ?? '127.0.0.1';
server.listen(port, host, () => console.log(`payments API on http://${host}:${port}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    server.close(() => pool.end().then(() => process.exit(0)));
    server.closeIdleConnections();
  });
}

// What the two Express variants share: an Express 5 app with the JSON body
// parser, the payments handler (one autocommit INSERT into PostgreSQL), and an
// error handler that answers with JSON and the status the middleware chose.
import http from 'node:http';
import express from 'express';
import { BUSINESS_ERROR, HttpError, INSERT_PAYMENT, MAX_BODY_BYTES, listen, makePool, validatePayment } from './common.js';

// middleware: what runs before the handler; skip(req): true when the
// middleware has answered already (a replay); onError(req, err): the handler
// failed (a 500), before the error handler answers.
export function createApp(name, middleware, { skip = () => false, onError = async () => {} } = {}) {
  const pool = makePool(name);
  const insert = { name: `${name}_insert`, text: INSERT_PAYMENT };
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(express.json({ limit: MAX_BODY_BYTES }));
  app.post('/payments', ...middleware, async (req, res) => {
    if (skip(req)) return;
    try {
      const key = req.get('idempotency-key');
      if (key === undefined || key.trim() === '') throw new HttpError(400, 'Idempotency-Key required');
      const payment = validatePayment(req.body);
      if (payment.amount <= 0) {
        res.status(422).json(BUSINESS_ERROR);
        return;
      }
      const { rows: [row] } = await pool.query({ ...insert, values: [key, payment.amount, payment.to] });
      res.status(201).json(row.response);
    } catch (err) {
      if (!(err instanceof HttpError)) await onError(req, err);
      throw err;
    }
  });
  // Errors: a thrown HttpError or the body parser's (err.status), a middleware's
  // Error after it set res.status(), or a stored error body that a middleware
  // replays through next(body).
  app.use((err, req, res, next) => {
    if (res.headersSent) return next(err);
    let status;
    let body;
    if (err instanceof Error) {
      status = err.status ?? err.statusCode ?? (res.statusCode >= 400 ? res.statusCode : 500);
      if (status >= 500) console.error(`${name}: ${req.method} ${req.url}: ${err.stack ?? err}`);
      body = { error: status >= 500 ? 'internal error' : err.message };
    } else {
      status = res.statusCode >= 400 ? res.statusCode : 500;
      body = err;
    }
    res.status(status).json(body);
  });
  return { app, pool };
}

// Express 5's app.listen() is http.createServer(app).listen(); done here
// through listen() (port file, signals) as for the node:http variants.
export function start(name, app, onClose) {
  const server = http.createServer(app);
  listen(name, server, onClose);
  return server;
}

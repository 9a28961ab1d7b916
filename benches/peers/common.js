// Shared by queue.js and lock.js: fail fast and clearly when Redis is not
// there (ioredis would otherwise retry and log every attempt), and one way
// to end a run.
'use strict';

const IORedis = require('ioredis');

// Hides a password in a redis:// URL for messages.
function mask(url) {
  const at = url.lastIndexOf('@');
  return at < 0 ? url : `redis://***${url.slice(at)}`;
}

// Resolves once a single PING to `url` succeeds; rejects with a message that
// names the URL otherwise. No reconnect attempts.
async function checkReachable(url) {
  const conn = new IORedis(url, {
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  // The socket's own error (ECONNREFUSED, ENOTFOUND, ...) says more than
  // the rejected connect() ("Connection is closed.").
  let socketError = null;
  conn.on('error', (err) => {
    socketError = socketError || err;
  });
  try {
    await conn.connect();
    await conn.ping();
  } catch (err) {
    throw new Error(`cannot reach Redis at ${mask(url)}: ${(socketError || err).message}`);
  } finally {
    conn.disconnect();
  }
}

// Runs `main`, exits 0 when it resolves, prints the error and exits 1 when it
// rejects (the stack only with DEBUG set).
function run(script, main) {
  main().then(
    () => process.exit(0),
    (err) => {
      const text = err instanceof Error ? err.message : String(err);
      console.error(`${script}: ${process.env.DEBUG && err && err.stack ? err.stack : text}`);
      process.exit(1);
    }
  );
}

module.exports = { checkReachable, run };

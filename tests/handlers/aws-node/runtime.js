// A tiny stand-in for AWS Lambda's Node.js runtime: serves the `handler` export of handler
// modules over HTTP, so that Switchboard's `aws` dialect can call them as functions (the
// Node.js twin of tests/handlers/aws/runtime.py, with the same interface).
//
//     NODE_PATH=path/to/handlers node runtime.js onconnect ondisconnect sendmessage [--port 0]
//
// Each module is served at `POST /<module>`; with a single module, also at `POST /`. A
// module is `<module>.js`, `.mjs` or `.cjs` in a directory of NODE_PATH (the user's, first)
// or else in simple-chat/ beside this file (the examples), so a user module named like an
// example is the one served. Modules are loaded with `import()`: CommonJS
// (`exports.handler = …`) and ES modules (`export const handler = …`, in `.mjs` or under a
// package.json with `"type": "module"`) alike. The handler may return a promise (async) or
// call `callback(error, result)`.
//
// The request body is the event (JSON); the handler's result is the reply body (JSON;
// `null` when it gives none). A handler that throws, rejects, calls back with an error or
// runs past its timeout (30 s) is logged on stderr and answered with 500
// `{"errorMessage", "errorType", "trace"}`, as Lambda reports an unhandled error (the
// gateway treats it as a failed call); so is every invocation in flight when an error
// escapes them all (thrown in a timer, a rejection nobody handles), and the adapter goes
// on serving. Prints `listening on 127.0.0.1:<port>` once ready.
// Node's standard library only; the handler modules are exactly what would be deployed to
// Lambda.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const { parseArgs } = require('node:util');

/** How long an invocation may run, as a Lambda function's timeout. */
const TIMEOUT_MS = 30_000;
/** The examples, searched after the user's directories. */
const EXAMPLES = path.join(__dirname, 'simple-chat');
/** The extensions a handler file may have, in the order Lambda tries them. */
const EXTENSIONS = ['.js', '.mjs', '.cjs'];
/** How to end each invocation in flight, with an error or a result. */
const inFlight = new Set();

/** The attributes handlers commonly read from Lambda's context object. */
function lambdaContext(functionName, event, finish) {
  const region = process.env.AWS_REGION || 'us-east-1';
  const deadline = Date.now() + TIMEOUT_MS;
  const requestId = event && event.requestContext && event.requestContext.requestId;
  return {
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:${region}:000000000000:function:${functionName}`,
    memoryLimitInMB: '128',
    awsRequestId: typeof requestId === 'string' ? requestId : crypto.randomUUID(),
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: 'switchboard',
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    // The legacy completion methods, still used by older handlers.
    done: (error, result) => finish(error, result),
    succeed: (result) => finish(null, result),
    fail: (error) => finish(error == null ? new Error('handled') : error),
  };
}

/** The file of `name`: the first match in the user's directories, then the examples. */
function findModule(name) {
  const userDirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  for (const dir of [...userDirs, EXAMPLES]) {
    for (const ext of EXTENSIONS) {
      const file = path.resolve(dir, name + ext);
      if (fs.statSync(file, { throwIfNoEntry: false })?.isFile()) {
        return file;
      }
    }
  }
  return null;
}

/** Loads `name` and returns its `handler` function. */
async function loadHandler(name) {
  const file = findModule(name);
  if (file === null) {
    throw new Error(`no module ${name} (${EXTENSIONS.join(', ')}) on NODE_PATH or in ${EXAMPLES}`);
  }
  const module = await import(pathToFileURL(file).href);
  // A CommonJS module's exports are its default export; Node also names the ones it sees.
  const handler = module.handler ?? module.default?.handler;
  if (typeof handler !== 'function') {
    throw new Error(`${file} exports no function named handler`);
  }
  return handler;
}

/**
 * Runs one invocation: settles with the handler's result, whether it returns a promise or
 * calls back; rejects when it throws, rejects, calls back with an error or times out.
 */
function invoke(handler, name, event) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (error, result) => {
      if (settled) return;
      settled = true;
      inFlight.delete(finish);
      clearTimeout(timer);
      if (error != null) reject(error);
      else resolve(result);
    };
    const timer = setTimeout(() => finish(timedOut()), TIMEOUT_MS);
    inFlight.add(finish);
    const context = lambdaContext(name, event, finish);
    const callback = (error, result) => finish(error, result);
    try {
      const returned = handler(event, context, callback);
      if (returned !== null && typeof returned === 'object' && typeof returned.then === 'function') {
        returned.then((result) => finish(null, result), (error) => finish(error ?? new Error('rejected')));
      } else if (handler.length < 3) {
        // Neither async nor taking a callback: Lambda answers null (unless the context's
        // legacy methods were called, in this turn).
        setImmediate(() => finish(null, null));
      }
    } catch (error) {
      finish(error ?? new Error('thrown'));
    }
  });
}

function timedOut() {
  const error = new Error(`Task timed out after ${(TIMEOUT_MS / 1000).toFixed(2)} seconds`);
  error.name = 'TimeoutError';
  return error;
}

/** The body Lambda reports an unhandled error with. */
function errorBody(error) {
  if (error instanceof Error) {
    return {
      errorMessage: error.message,
      errorType: error.name || 'Error',
      trace: String(error.stack || '').split('\n'),
    };
  }
  return { errorMessage: String(error), errorType: 'string', trace: [] };
}

function reply(res, status, value) {
  const body = Buffer.from(JSON.stringify(value === undefined ? null : value) ?? 'null');
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': body.length });
  res.end(body);
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
    },
  });
  if (positionals.length === 0) {
    throw new Error('usage: node runtime.js MODULE... [--host HOST] [--port PORT]');
  }
  const handlers = new Map();
  for (const name of positionals) {
    handlers.set(name, await loadHandler(name));
  }
  if (handlers.size === 1) {
    handlers.set('', handlers.get(positionals[0]));
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', async () => {
      const name = req.url.split('?', 1)[0].replace(/^\/+|\/+$/g, '');
      const handler = handlers.get(name);
      if (req.method !== 'POST') {
        return reply(res, 405, { errorMessage: `${req.method} is not POST` });
      }
      if (handler === undefined) {
        return reply(res, 404, { errorMessage: `no handler at /${name}` });
      }
      let result;
      try {
        const event = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        result = await invoke(handler, name || positionals[0], event);
      } catch (error) {
        // An unhandled error, as Lambda reports it.
        console.error(`Invoke Error /${name}:`, error);
        return reply(res, 500, errorBody(error));
      }
      try {
        reply(res, 200, result);
      } catch (error) {
        console.error(`Invoke Error /${name}: the result is not JSON:`, error);
        reply(res, 500, errorBody(error));
      }
    });
  });
  // Keep-alive: the gateway pools connections; Node's default (5 s) would close them often.
  server.keepAliveTimeout = 60_000;
  server.listen(Number(values.port), values.host, () => {
    const { address, port } = server.address();
    console.log(`listening on ${address}:${port}`);
  });
  const stop = () => server.close(() => process.exit(0)) && server.closeAllConnections();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // An error thrown outside any promise (in a timer, a callback) or a rejection nobody
  // handles: on Lambda it fails the invocation, which is alone in its process. Here it fails
  // every invocation in flight, and the adapter keeps serving.
  const failInFlight = (error) => {
    console.error('Uncaught error:', error);
    for (const finish of [...inFlight]) finish(error ?? new Error('uncaught'));
  };
  process.on('uncaughtException', failInFlight);
  process.on('unhandledRejection', failInFlight);
}

main().catch((error) => {
  console.error(`runtime.js: ${error.message}`);
  process.exit(2);
});

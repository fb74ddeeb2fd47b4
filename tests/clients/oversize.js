// Sends one message of <bytes> bytes on each of <tries> connections (one after another)
// and prints, as one JSON line, the close code each connection's close event reported.
// Usage: node oversize.js <ws-url> <bytes> <tries>
'use strict';

const WebSocket = require('ws');

const [url, bytes, tries] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];

function once() {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    // A reset shows as an error event before close (1006); the close code tells.
    ws.on('error', () => {});
    ws.on('open', () => ws.send(Buffer.alloc(bytes, 0x61)));
    ws.on('close', (code) => resolve(code));
  });
}

(async () => {
  const codes = [];
  for (let i = 0; i < tries; i++) {
    codes.push(await once());
  }
  console.log(JSON.stringify({ codes }));
})();

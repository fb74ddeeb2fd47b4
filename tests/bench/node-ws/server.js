// The Node.js peer of the Switchboard benchmarks (tests/bench/README.md): what a user
// writes instead of using a broker. One process, the `ws` package, everything in memory:
//   - every text or binary message is echoed to its sender;
//   - a client connecting with `?room=NAME` joins that room until it leaves;
//   - `POST /publish/NAME` sends the request body (text) to every member of the room and
//     answers {"delivered": n}.
// Listens on 127.0.0.1 on a free port (or $PORT) and prints {"port": N} on stdout.
'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const rooms = new Map();

const server = http.createServer((req, res) => {
  const match = /^\/publish\/([^/?]+)/.exec(req.url);
  if (req.method !== 'POST' || !match) {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    const members = rooms.get(decodeURIComponent(match[1])) || new Set();
    let delivered = 0;
    for (const ws of members) {
      if (ws.readyState === ws.OPEN) {
        ws.send(text);
        delivered += 1;
      }
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ delivered }));
  });
});

const wss = new WebSocketServer({ server, perMessageDeflate: false });

wss.on('connection', (ws, req) => {
  const room = new URL(req.url, 'http://localhost').searchParams.get('room');
  if (room) {
    if (!rooms.has(room)) rooms.set(room, new Set());
    rooms.get(room).add(ws);
  }
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('close', () => {
    if (!room) return;
    const members = rooms.get(room);
    members.delete(ws);
    if (members.size === 0) rooms.delete(room);
  });
  ws.on('error', () => {});
});

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});

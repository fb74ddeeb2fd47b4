// A Node `ws` client over wss with a private CA: connects to URL trusting CA_FILE, sends
// TEXT, prints {"reply": …} with the first message it gets, closes with 1000.
// Run with: node wss.js wss://localhost:PORT/ CA_FILE TEXT
const fs = require("fs");
const WebSocket = require("ws");

const [url, caFile, text] = process.argv.slice(2);
const ws = new WebSocket(url, { ca: fs.readFileSync(caFile) });
const timer = setTimeout(() => {
  console.error("no reply within 10 s");
  process.exit(2);
}, 10000);
ws.on("open", () => ws.send(text));
ws.on("message", (data) => {
  console.log(JSON.stringify({ reply: data.toString() }));
  ws.close(1000);
});
ws.on("close", () => {
  clearTimeout(timer);
  process.exit(0);
});
ws.on("error", (e) => {
  console.error(e.message);
  process.exit(1);
});

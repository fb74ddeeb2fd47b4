//! What the browser tests of the chat page share: headless Chromium through playwright-core
//! (the system chromium, never a downloaded one), pages opened on the chat page with their
//! diagnostics and WebSocket URLs collected, bounded waits on in-page conditions, and a
//! runner that prints what the pages showed on failure and exits 0 (pass), 1 (fail) or 2
//! (bad usage).
//!
//! An https base URL is checked as a browser checks it: certificate errors are not ignored,
//! so the certificate must chain to a CA Chromium trusts (on Linux, the NSS database in
//! $HOME/.pki/nssdb). Each page opened over https logs its TLS version, certificate subject
//! and issuer.
//!
//! Environment:
//!   CHROMIUM    path of the chromium binary (default /usr/bin/chromium)
//!   SCREENSHOT  if set, a PNG of the test's last page is saved at this path
//!   HOME        where Chromium finds .pki/nssdb (the CAs it trusts beyond its own roots)

import { chromium } from 'playwright-core';

const HARD_TIMEOUT_MS = 60_000;
export const STEP_TIMEOUT_MS = 10_000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** An error that carries what we waited for and what the pages showed. */
export class Expectation extends Error {
  constructor(expected, found) {
    super(`expected: ${expected}`);
    this.expected = expected;
    this.found = found;
  }
}

function parseBase(script, arg) {
  if (!arg) {
    console.error(`usage: node tests/browser/${script} <base-url>   (e.g. http://127.0.0.1:8080)`);
    process.exit(2);
  }
  let url;
  try {
    url = new URL(arg);
  } catch {
    console.error(`${script}: not a URL: ${arg}`);
    process.exit(2);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    console.error(`${script}: base URL must be http(s), got ${arg}`);
    process.exit(2);
  }
  return url.href.replace(/\/+$/, '');
}

/** Everything a page shows that the tests care about; runs in the page. */
function snapshotInPage() {
  const text = (el) => (el ? el.textContent.replace(/\s+/g, ' ').trim() : null);
  const all = (sel) => Array.from(document.querySelectorAll(sel), (el) => text(el));
  let state = null;
  try {
    state = window.chatState === undefined ? null : JSON.parse(JSON.stringify(window.chatState));
  } catch {
    state = '<unserialisable window.chatState>';
  }
  return {
    url: location.href,
    status: text(document.querySelector('#status')),
    count: text(document.querySelector('#count')),
    online: all('#online li'),
    msgs: all('#log .msg'),
    sys: all('#log .sys'),
    chatState: state,
  };
}

/** What `page` shows (see snapshotInPage). */
export async function snapshot(page) {
  try {
    return await page.evaluate(snapshotInPage);
  } catch (e) {
    return { error: `could not read page: ${e.message}` };
  }
}

/**
 * Runs a browser test: `run({ base, context, open, waitFor, websockets, log })` against the
 * base URL in argv[2]. `open(room, name)` opens the chat page as a new page; `waitFor(who,
 * page, expected, predicate, arg)` waits until the in-page `predicate(arg)` holds;
 * `websockets(who)` lists the URLs of the WebSockets that page opened, in order.
 */
export async function runBrowserTest(name, script, run) {
  const log = (line) => console.log(`[${name}] ${line}`);
  const base = parseBase(script, process.argv[2]);
  const pages = {};
  const sockets = {};
  const diagnostics = [];
  let browser = null;
  let ok = false;
  let closing = false;

  const dumpDiagnostics = async () => {
    for (const [who, page] of Object.entries(pages)) {
      console.error(`[${name}] ${who} page: ${JSON.stringify(await snapshot(page))}`);
    }
    for (const d of diagnostics) console.error(`[${name}]   ${d}`);
  };

  const shutdown = async () => {
    if (closing) return;
    closing = true;
    const shot = process.env.SCREENSHOT;
    const last = Object.values(pages).at(-1);
    if (shot && last) {
      try {
        await last.screenshot({ path: shot, fullPage: true, timeout: 5_000 });
        log(`screenshot saved to ${shot}`);
      } catch (e) {
        log(`could not save screenshot to ${shot}: ${e.message.split('\n')[0]}`);
      }
    }
    if (browser) {
      await Promise.race([
        browser.close().catch(() => {}),
        new Promise((r) => setTimeout(r, 5_000).unref()),
      ]);
    }
  };

  const hardTimeout = setTimeout(async () => {
    console.error(`[${name}] FAIL: hard timeout of ${HARD_TIMEOUT_MS / 1000} s exceeded`);
    await dumpDiagnostics();
    await shutdown();
    process.exit(1);
  }, HARD_TIMEOUT_MS);

  const waitFor = async (who, page, expected, predicate, arg) => {
    log(`waiting: ${who} ${expected}`);
    try {
      await page.waitForFunction(predicate, arg, { timeout: STEP_TIMEOUT_MS, polling: 50 });
    } catch (e) {
      throw new Expectation(`${who} ${expected} (within ${STEP_TIMEOUT_MS / 1000} s)`, {
        [who]: await snapshot(page),
        error: e.message.split('\n')[0],
      });
    }
    log(`ok: ${who} ${expected}`);
  };

  try {
    log(`launching ${CHROMIUM}`);
    // launch() gives Chromium a fresh temporary --user-data-dir and removes it on close.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
    });
    log(`chromium ${browser.version()} up`);
    const context = await browser.newContext();

    const websockets = (who) => [...(sockets[who] ?? [])];

    const open = async (room, who) => {
      const page = await context.newPage();
      pages[who] = page;
      sockets[who] = [];
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') diagnostics.push(`${who} console.${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => diagnostics.push(`${who} page error: ${e.message}`));
      page.on('requestfailed', (r) => diagnostics.push(`${who} request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
      page.on('websocket', (ws) => {
        sockets[who].push(ws.url());
        diagnostics.push(`${who} websocket opened: ${ws.url()}`);
        ws.on('socketerror', (e) => diagnostics.push(`${who} websocket error: ${e}`));
        ws.on('close', () => diagnostics.push(`${who} websocket closed: ${ws.url()}`));
      });
      const url = `${base}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(who)}`;
      log(`opening ${url}`);
      const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT_MS });
      if (!resp || !resp.ok()) {
        throw new Expectation(`HTTP 2xx for ${url}`, { status: resp ? resp.status() : 'no response' });
      }
      // Over plain http Chromium reports no details (null, or an object without fields).
      const tls = await resp.securityDetails();
      if (tls && tls.protocol) {
        log(`${who}'s page came over ${tls.protocol}: certificate for ${tls.subjectName} issued by ${tls.issuer}`);
      }
      return page;
    };

    await run({ base, context, open, waitFor, websockets, log });
    ok = true;
  } catch (e) {
    if (e instanceof Expectation) {
      console.error(`[${name}] FAIL: ${e.message}`);
      console.error(`[${name}] found: ${JSON.stringify(e.found, null, 2)}`);
    } else {
      console.error(`[${name}] FAIL: ${e && e.stack ? e.stack : e}`);
    }
    await dumpDiagnostics();
  } finally {
    await shutdown();
    clearTimeout(hardTimeout);
  }
  if (ok) {
    log('PASS');
    process.exit(0);
  }
  process.exit(1);
}

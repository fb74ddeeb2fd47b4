#!/usr/bin/env node
//! Browser end-to-end test of the Switchboard chat page, in headless Chromium.
//!
//! Usage: node tests/browser/chat.mjs <base-url>
//!   <base-url> serves the chat page at `/`, e.g. http://127.0.0.1:8080
//!
//! Environment:
//!   CHROMIUM    path of the chromium binary (default /usr/bin/chromium)
//!   SCREENSHOT  if set, a PNG of bob's page is saved at this path
//!
//! Two pages (alice and bob) join the same random room. Alice sends a message
//! with Enter, bob replies with the #send button, each must see the other's
//! message, and nobody may see their own message twice (the page may echo
//! locally, the server must not echo it back on top of that).
//!
//! Uses playwright-core with the system chromium: no browser is ever
//! downloaded. Exits 0 on success, 1 on failure (with expected vs found),
//! 2 on bad usage. Hard timeout: 60 s overall.

import { chromium } from 'playwright-core';

const HARD_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 10_000;
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

function log(line) {
  console.log(`[chat] ${line}`);
}

/** An error that carries what we waited for and what the pages showed. */
class Expectation extends Error {
  constructor(expected, found) {
    super(`expected: ${expected}`);
    this.expected = expected;
    this.found = found;
  }
}

function parseBase(arg) {
  if (!arg) {
    console.error('usage: node tests/browser/chat.mjs <base-url>   (e.g. http://127.0.0.1:8080)');
    process.exit(2);
  }
  let url;
  try {
    url = new URL(arg);
  } catch {
    console.error(`chat.mjs: not a URL: ${arg}`);
    process.exit(2);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    console.error(`chat.mjs: base URL must be http(s), got ${arg}`);
    process.exit(2);
  }
  return url.href.replace(/\/+$/, '');
}

/** Everything a page shows that the test cares about; runs in the page. */
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

async function snapshot(page) {
  try {
    return await page.evaluate(snapshotInPage);
  } catch (e) {
    return { error: `could not read page: ${e.message}` };
  }
}

/** In-page predicates (must be self-contained: they are serialised). */
const predicates = {
  connected: function connected() {
    if (window.chatState && typeof window.chatState === 'object') {
      return window.chatState.connected === true;
    }
    const s = document.querySelector('#status');
    return !!s && /\bconnected\b/i.test(s.textContent) && !/\bnot\b/i.test(s.textContent);
  },
  online: function online(names) {
    const items = Array.from(document.querySelectorAll('#online li'), (li) =>
      li.textContent.replace(/\s+/g, ' ').trim(),
    );
    // "alice" or "alice (you)" both count as alice.
    const has = (n) => items.some((t) => t === n || (t.startsWith(n) && /^\W/.test(t.slice(n.length))));
    return names.every(has);
  },
  msgCount: function msgCount(line) {
    return Array.from(document.querySelectorAll('#log .msg')).filter(
      (el) => el.textContent.replace(/\s+/g, ' ').trim() === line,
    ).length;
  },
  hasMsg: function hasMsg(line) {
    return (
      Array.from(document.querySelectorAll('#log .msg')).filter(
        (el) => el.textContent.replace(/\s+/g, ' ').trim() === line,
      ).length > 0
    );
  },
};

/** Waits until `predicate(arg)` is true in `page`; throws an Expectation otherwise. */
async function waitFor(who, page, expected, predicate, arg) {
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
}

async function expectCount(who, page, line, want) {
  const got = await page.evaluate(predicates.msgCount, line);
  if (got !== want) {
    throw new Expectation(`"${line}" exactly ${want} time(s) in ${who}'s #log`, {
      count: got,
      [who]: await snapshot(page),
    });
  }
  log(`ok: "${line}" appears exactly ${want} time(s) in ${who}'s log`);
}

async function openPage(context, base, room, name, diagnostics) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') diagnostics.push(`${name} console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => diagnostics.push(`${name} page error: ${e.message}`));
  page.on('requestfailed', (r) => diagnostics.push(`${name} request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`));
  page.on('websocket', (ws) => {
    diagnostics.push(`${name} websocket opened: ${ws.url()}`);
    ws.on('socketerror', (e) => diagnostics.push(`${name} websocket error: ${e}`));
    ws.on('close', () => diagnostics.push(`${name} websocket closed: ${ws.url()}`));
  });
  const url = `${base}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`;
  log(`opening ${url}`);
  const resp = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT_MS });
  if (!resp || !resp.ok()) {
    throw new Expectation(`HTTP 2xx for ${url}`, { status: resp ? resp.status() : 'no response' });
  }
  return page;
}

async function run(base, browserRef, pages, diagnostics) {
  log(`launching ${CHROMIUM}`);
  // launch() gives Chromium a fresh temporary --user-data-dir and removes it on close.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  browserRef.browser = browser;
  log(`chromium ${browser.version()} up`);
  const context = await browser.newContext();

  const room = `e2e-${Math.random().toString(36).slice(2, 10)}`;
  log(`room ${room}`);
  const alice = await openPage(context, base, room, 'alice', diagnostics);
  pages.alice = alice;
  const bob = await openPage(context, base, room, 'bob', diagnostics);
  pages.bob = bob;

  await waitFor('alice', alice, 'is connected', predicates.connected);
  await waitFor('bob', bob, 'is connected', predicates.connected);
  await waitFor('alice', alice, 'lists alice and bob in #online', predicates.online, ['alice', 'bob']);

  const fromAlice = 'hello from alice';
  log(`alice types "${fromAlice}" + Enter`);
  await alice.fill('#input', fromAlice);
  await alice.press('#input', 'Enter');
  await waitFor('bob', bob, `shows "alice: ${fromAlice}" in #log`, predicates.hasMsg, `alice: ${fromAlice}`);

  const fromBob = 'hi alice';
  log(`bob types "${fromBob}" + clicks #send`);
  await bob.fill('#input', fromBob);
  await bob.click('#send');
  await waitFor('alice', alice, `shows "bob: ${fromBob}" in #log`, predicates.hasMsg, `bob: ${fromBob}`);

  // Bob's reply was sent after alice's message reached bob, so by the time alice
  // sees the reply, any server echo of her own message has arrived as well.
  await expectCount('alice', alice, `alice: ${fromAlice}`, 1);
  await expectCount('bob', bob, `alice: ${fromAlice}`, 1);
}

async function main() {
  const base = parseBase(process.argv[2]);
  const browserRef = { browser: null };
  const pages = {};
  const diagnostics = [];
  let ok = false;
  let closing = false;

  const shutdown = async () => {
    if (closing) return;
    closing = true;
    const shot = process.env.SCREENSHOT;
    if (shot && pages.bob) {
      try {
        await pages.bob.screenshot({ path: shot, fullPage: true, timeout: 5_000 });
        log(`screenshot of bob's page saved to ${shot}`);
      } catch (e) {
        log(`could not save screenshot to ${shot}: ${e.message.split('\n')[0]}`);
      }
    }
    if (browserRef.browser) {
      await Promise.race([
        browserRef.browser.close().catch(() => {}),
        new Promise((r) => setTimeout(r, 5_000).unref()),
      ]);
    }
  };

  const hardTimeout = setTimeout(async () => {
    console.error(`[chat] FAIL: hard timeout of ${HARD_TIMEOUT_MS / 1000} s exceeded`);
    await dumpDiagnostics(pages, diagnostics);
    await shutdown();
    process.exit(1);
  }, HARD_TIMEOUT_MS);

  try {
    await run(base, browserRef, pages, diagnostics);
    ok = true;
  } catch (e) {
    if (e instanceof Expectation) {
      console.error(`[chat] FAIL: ${e.message}`);
      console.error(`[chat] found: ${JSON.stringify(e.found, null, 2)}`);
    } else {
      console.error(`[chat] FAIL: ${e && e.stack ? e.stack : e}`);
    }
    await dumpDiagnostics(pages, diagnostics);
  } finally {
    await shutdown();
    clearTimeout(hardTimeout);
  }
  if (ok) {
    log('PASS: alice and bob chatted through the gateway');
    process.exit(0);
  }
  process.exit(1);
}

async function dumpDiagnostics(pages, diagnostics) {
  for (const [name, page] of Object.entries(pages)) {
    console.error(`[chat] ${name} page: ${JSON.stringify(await snapshot(page))}`);
  }
  for (const d of diagnostics) console.error(`[chat]   ${d}`);
}

main();

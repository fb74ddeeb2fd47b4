#!/usr/bin/env node
//! Browser end-to-end test of the Switchboard chat page, in headless Chromium.
//!
//! Usage: node tests/browser/chat.mjs <base-url>
//!   <base-url> serves the chat page at `/`, e.g. http://127.0.0.1:8080, or
//!   https://localhost:8443 (the certificate must be trusted, see harness.mjs)
//!
//! Environment: CHROMIUM, SCREENSHOT (bob's page), HOME, see harness.mjs.
//!
//! Two pages (alice and bob) join the same random room. Alice sends a message
//! with Enter, bob replies with the #send button, each must see the other's
//! message, and nobody may see their own message twice (the page may echo
//! locally, the server must not echo it back on top of that). Every WebSocket
//! the pages open goes to the base URL's host, with wss:// for an https page
//! and ws:// for an http one.
//!
//! Exits 0 on success, 1 on failure (with expected vs found), 2 on bad usage.
//! Hard timeout: 60 s overall.

import { Expectation, runBrowserTest, snapshot } from './harness.mjs';

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

runBrowserTest('chat', 'chat.mjs', async ({ base, open, waitFor, websockets, log }) => {
  const expectCount = async (who, page, line, want) => {
    const got = await page.evaluate(predicates.msgCount, line);
    if (got !== want) {
      throw new Expectation(`"${line}" exactly ${want} time(s) in ${who}'s #log`, {
        count: got,
        [who]: await snapshot(page),
      });
    }
    log(`ok: "${line}" appears exactly ${want} time(s) in ${who}'s log`);
  };

  const room = `e2e-${Math.random().toString(36).slice(2, 10)}`;
  log(`room ${room}`);
  const alice = await open(room, 'alice');
  const bob = await open(room, 'bob');

  await waitFor('alice', alice, 'is connected', predicates.connected);
  await waitFor('bob', bob, 'is connected', predicates.connected);
  await waitFor('alice', alice, 'lists alice and bob in #online', predicates.online, ['alice', 'bob']);

  // The page picks its WebSocket scheme from its own: wss:// when served over https.
  const page = new URL(base);
  const scheme = page.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const who of ['alice', 'bob']) {
    const urls = websockets(who);
    const wrong = urls.filter((u) => {
      const url = new URL(u);
      return url.protocol !== scheme || url.host !== page.host;
    });
    if (urls.length === 0 || wrong.length > 0) {
      throw new Expectation(`${who}'s WebSockets all to ${scheme}//${page.host}`, { websockets: urls });
    }
  }
  log(`ok: alice and bob connected with ${scheme}//${page.host}`);

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
  log('alice and bob chatted through the gateway');
});

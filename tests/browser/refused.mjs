#!/usr/bin/env node
//! Browser test of how the chat page meets a refusal, in headless Chromium.
//!
//! Usage: node tests/browser/refused.mjs <base-url>
//!   <base-url> serves the chat page at `/` with a register function that refuses
//!   the room `refused-room` and accepts any other (tests/it/browser.rs starts one).
//!
//! Environment: CHROMIUM, SCREENSHOT (the last page), see harness.mjs.
//!
//!   1. A room the chat functions would refuse (`bad room!`) is shown as refused
//!      and never connected.
//!   2. A room the server refuses anyway (`refused-room`) is shown as refused after
//!      one attempt, and no reconnect is scheduled.
//!   3. A connection that opened and was then dropped (the test closes it through
//!      the send-back API) reconnects.
//!   4. When the gateway is gone (the test then shuts it down), the page is not told
//!      it was refused: it keeps reconnecting.
//!
//! Exits 0 on success, 1 on failure (with expected vs found), 2 on bad usage.

import { Expectation, runBrowserTest, snapshot } from './harness.mjs';

/** In-page predicates (self-contained: they are serialised). */
const refused = function refused() {
  return !!window.chatState && typeof window.chatState.refused === 'string';
};
const opens = function opens(n) {
  return !!window.chatState && window.chatState.opens >= n && window.chatState.connected === true;
};
const unreachable = function unreachable() {
  return /cannot reach the server, reconnecting in/.test(document.querySelector('#status').textContent);
};
const readState = function readState() {
  const s = window.chatState;
  return {
    attempts: s.attempts,
    opens: s.opens,
    retrying: s.retrying,
    refused: s.refused,
    status: document.querySelector('#status').textContent,
  };
};

runBrowserTest('refused', 'refused.mjs', async ({ open, waitFor, log }) => {
  const expectState = async (who, page, want) => {
    const got = await page.evaluate(readState);
    const bad = Object.entries(want).filter(([key, check]) => !check(got[key]));
    if (bad.length > 0) {
      throw new Expectation(`${who}: ${bad.map(([key]) => key).join(', ')} as expected`, {
        [who]: await snapshot(page),
      });
    }
    log(`ok: ${who} ${JSON.stringify(got)}`);
  };

  const invalid = await open('bad room!', 'ann');
  await waitFor('ann', invalid, 'shows the room as refused', refused);
  await expectState('ann', invalid, {
    attempts: (n) => n === 0,
    retrying: (r) => r === false,
    status: (s) => s.includes('room must be 1 to 64 characters'),
  });

  const refusedPage = await open('refused-room', 'bob');
  await waitFor('bob', refusedPage, 'shows the refusal', refused);
  await expectState('bob', refusedPage, {
    attempts: (n) => n === 1,
    opens: (n) => n === 0,
    retrying: (r) => r === false,
    status: (s) => s.includes('the server refused') && s.includes('refused-room'),
  });

  const dropped = await open('ok-room', 'cat');
  await waitFor('cat', dropped, 'is connected', opens, 1);
  log('cat waits for the test to drop its connection');
  await waitFor('cat', dropped, 'reconnects after the drop', opens, 2);
  await expectState('cat', dropped, { refused: (r) => r === null });

  log('cat waits for the test to stop the gateway');
  await waitFor('cat', dropped, 'retries a gateway that is gone', unreachable);
  await expectState('cat', dropped, { refused: (r) => r === null, retrying: (r) => r === true });
});

// Reconnecting and close codes against a live engine: resume of an unacknowledged offer,
// 4005 (deactivated), 4001 (replaced), 1008 (auth failure and the rate-limit close), 4003.

import { test } from "node:test";
import assert from "node:assert/strict";

import { ClientStoppedError, WorkerClient } from "../src";
import { BA, freePort } from "./helpers/engine";
import { Recorder } from "./helpers/events";
import { liveEngine, MS_TIMESTAMP } from "./helpers/fixture";

const live = liveEngine();

test("a reconnect resumes the unacknowledged offer: same offerId, same expiresAt string", async () => {
  const w = await live.worker({ autoAck: false });
  await w.client.connect();
  await w.client.goOnline({ ...BA });
  const requestId = await live.engine().createRequest();
  live.cleanupRequest(requestId);
  const [offer] = await w.events.next("offer", (o) => o.requestId === requestId);

  const mark = w.events.mark();
  w.client.dropConnection(); // as a lost network: no close handshake
  const [resumed, info] = await w.events.next("authenticated", (_d, i) => i.reconnect, 15000, mark);
  assert.equal(info.refresh, false);
  assert.equal(resumed.onlineCity, "buenos-aires", "still online within the grace period");
  const [again, seen] = await w.events.next("offer", (o) => o.offerId === offer.offerId, 15000, mark);
  assert.equal(seen.duplicate, true);
  assert.equal(again.expiresAt, offer.expiresAt);
  assert.match(again.expiresAt, MS_TIMESTAMP);
  assert.equal(again.requestId, offer.requestId);
  assert.ok(again.seq >= offer.seq);
  assert.equal(w.client.stats.sockets, 2);
  assert.equal(w.client.stats.heartbeatTimersStarted, 2, "one heartbeat per connection");
  assert.ok(w.client.heartbeatRunning);

  // Acknowledged (and seq <= lastSeq): not resent after the next reconnect.
  await w.client.ackOffer(again);
  assert.equal(w.client.lastSeq, again.seq);
  const mark2 = w.events.mark();
  w.client.dropConnection();
  await w.events.next("authenticated", (_d, i) => i.reconnect, 15000, mark2);
  await w.client.ping(); // auth_ok, the resent offers, then our pong: in order
  assert.equal(w.events.all("offer").length, 2, "an acknowledged offer is not sent again");
  await w.client.rejectOffer(again);
});

test("4005 after the worker is deactivated: the client stops and does not reconnect", async () => {
  const w = await live.worker();
  await w.client.connect();
  await w.client.goOnline({ ...BA });
  await live.engine().deactivateWorker(w.id);
  const [reason] = await w.events.next("stopped", () => true, 30000);
  assert.equal(reason.kind, "deactivated");
  assert.equal(reason.code, 4005);
  assert.equal(w.client.state, "stopped");
  assert.equal(w.client.reconnectScheduled, false);
  assert.equal(w.events.all("reconnecting").length, 0);
  const [closed] = await w.events.next("disconnected");
  assert.equal(closed.code, 4005);
  assert.equal(closed.reconnectInMs, null);
  await assert.rejects(w.client.connect(), ClientStoppedError);
  await assert.rejects(w.client.ping(), ClientStoppedError);
});

test("4001: a newer connection of the same worker replaces the older, which stops", async () => {
  const older = await live.worker();
  await older.client.connect();
  const newer = await live.worker({ id: older.id });
  await newer.client.connect();
  const [reason] = await older.events.next("stopped");
  assert.equal(reason.kind, "replaced");
  assert.equal(reason.code, 4001);
  assert.equal(older.client.reconnectScheduled, false);
  assert.equal(older.events.all("reconnecting").length, 0);
  await newer.client.ping();
  assert.equal(newer.client.state, "ready");
});

test("1008 auth failure: connect rejects and the client does not reconnect", async () => {
  const w = await live.worker({ token: "not-a-jwt" });
  await assert.rejects(w.client.connect(), (e: unknown) => {
    assert.ok(e instanceof ClientStoppedError, String(e));
    assert.equal(e.reason.kind, "auth_failed");
    assert.equal(e.reason.code, 1008);
    assert.match(e.reason.reason, /^auth: /);
    return true;
  });
  assert.equal(w.client.stats.sockets, 1);
  assert.equal(w.client.reconnectScheduled, false);
});

test("the rate-limit close (1008) pauses, then reconnects with one heartbeat", async () => {
  const w = await live.worker();
  const first = await w.client.connect();
  // Above the burst, in rounds of 10 awaited pings: never 32 answers queued (that is 4004).
  for (let sent = 0; sent < first.limits.messagesBurst * 3 && w.client.state === "ready"; sent += 10) {
    await Promise.allSettled(Array.from({ length: 10 }, () => w.client.ping()));
  }
  const [closed] = await w.events.next("disconnected");
  assert.equal(closed.code, 1008);
  assert.equal(closed.reason, "message rate limit exceeded");
  const [plan] = await w.events.next("reconnecting");
  assert.ok(plan.delayMs >= 200, "waits at least rateLimitPauseMs");
  await w.events.next("authenticated", (_d, i) => i.reconnect);
  await w.client.ping();
  assert.equal(w.client.stats.heartbeatTimersStarted, 2);
  assert.ok(w.client.heartbeatRunning);
});

test("4003 token expired: with a token source the client reconnects with a fresh token", async () => {
  const e = live.engine();
  const id = await e.createWorker();
  let calls = 0;
  const w = await live.worker({
    id,
    token: async () => (++calls === 1 ? e.token("worker", id, "2s") : e.token("worker", id, "1h")),
    refreshBeforeExpiryMs: 0,
  });
  await w.client.connect();
  const [closed] = await w.events.next("disconnected", () => true, 20000);
  assert.equal(closed.code, 4003);
  assert.notEqual(closed.reconnectInMs, null);
  await w.events.next("authenticated", (_d, i) => i.reconnect, 15000);
  assert.equal(calls, 2);
  await w.client.ping();
});

test("backoff grows exponentially with jitter, capped, one timer at a time", async () => {
  const port = await freePort(); // nothing listens there
  const client = new WorkerClient({
    url: `ws://127.0.0.1:${port}/ws/worker`,
    token: "t",
    backoff: { firstMs: 10, initialMs: 20, maxMs: 80 },
    random: () => 1,
  });
  const events = new Recorder(client);
  const connecting = client.connect().catch((err) => err);
  await events.next("reconnecting", (p) => p.attempt >= 6);
  assert.ok(client.reconnectScheduled);
  const delays = events.all("reconnecting").map(([p]) => p.delayMs);
  client.close();
  assert.ok((await connecting) instanceof ClientStoppedError);
  assert.deepEqual(delays, [10, 20, 40, 80, 80, 80]);
  assert.equal(client.stats.sockets, 6, "one socket per attempt, none stacked");
  assert.equal(client.reconnectScheduled, false);
});

// The worker client against a live engine: authentication, heartbeat, going online, offers,
// accept / reject, job progress and error frames.

import { test } from "node:test";
import assert from "node:assert/strict";

import { WorkerProtocolError } from "../src";
import { BA } from "./helpers/engine";
import { liveEngine, MS_TIMESTAMP } from "./helpers/fixture";

const live = liveEngine();

test("auth_ok carries the session fields, and the heartbeat runs at its interval", async () => {
  const w = await live.worker();
  const ok = await w.client.connect();
  assert.equal(ok.workerId, w.id);
  assert.equal(typeof ok.sessionId, "number");
  assert.equal(ok.protocolVersion, 1);
  assert.ok(ok.heartbeatIntervalMs > 0, "heartbeatIntervalMs");
  assert.ok(ok.heartbeatTimeoutMs > ok.heartbeatIntervalMs, "heartbeatTimeoutMs");
  assert.match(ok.tokenExpiresAt, MS_TIMESTAMP);
  assert.equal(ok.onlineCity, null);
  for (const k of ["maxMessageBytes", "locationPerSecond", "locationBurst", "messagesPerSecond", "messagesBurst"] as const) {
    assert.equal(typeof ok.limits[k], "number", `limits.${k}`);
  }
  assert.equal(w.client.state, "ready");
  assert.equal(w.client.heartbeatIntervalMs, ok.heartbeatIntervalMs);
  assert.ok(w.client.heartbeatRunning);
  const pong = await w.client.ping();
  assert.match(pong.serverTime, MS_TIMESTAMP);
});

test("a token refresh answers the full auth_ok and keeps the one heartbeat timer", async () => {
  const w = await live.worker();
  const first = await w.client.connect();
  const fresh = await live.engine().token("worker", w.id, "2h");
  const again = await w.client.refreshToken(fresh);
  assert.equal(again.workerId, w.id);
  assert.equal(again.heartbeatIntervalMs, first.heartbeatIntervalMs);
  assert.equal(again.heartbeatTimeoutMs, first.heartbeatTimeoutMs);
  assert.equal(again.sessionId, first.sessionId);
  assert.match(again.tokenExpiresAt, MS_TIMESTAMP);
  assert.ok(Date.parse(again.tokenExpiresAt) > Date.parse(first.tokenExpiresAt), "the new expiry is later");
  assert.equal(w.client.stats.heartbeatTimersStarted, 1, "a refresh starts no second heartbeat");
  assert.ok(w.client.heartbeatRunning);
  assert.equal(w.client.heartbeatIntervalMs, first.heartbeatIntervalMs);
  const [, info] = await w.events.next("authenticated", (_d, i) => i.refresh);
  assert.equal(info.reconnect, false);
  await w.client.ping(); // the session is still up
});

test("go_online answers the city and the skills, narrowed by the profile", async () => {
  const w = await live.worker({ skills: ["lawn_mowing", "gardening"] });
  await w.client.connect();
  const narrowed = await w.client.goOnline({ ...BA, skills: ["lawn_mowing", "plumbing"] });
  assert.equal(narrowed.cityId, "buenos-aires");
  assert.deepEqual(narrowed.skills, ["lawn_mowing"]);
  assert.deepEqual(narrowed.ignoredSkills, ["plumbing"]);
  const all = await w.client.goOnline({ ...BA }); // skills are optional: every profile skill
  assert.equal(all.cityId, "buenos-aires");
  assert.deepEqual([...(all.skills ?? [])].sort(), ["gardening", "lawn_mowing"]);
  await assert.rejects(w.client.goOnline({ ...BA, skills: ["plumbing"] }), (e: unknown) => {
    assert.ok(e instanceof WorkerProtocolError);
    assert.equal(e.code, "NO_MATCHING_SKILLS");
    return true;
  });
  await w.client.goOffline();
});

test("an offer arrives after a GraphQL create; accept returns the job with its address; start and complete", async () => {
  const w = await live.worker();
  await w.client.connect();
  await w.client.goOnline({ ...BA, skills: ["lawn_mowing"] });
  const requestId = await live.engine().createRequest();
  live.cleanupRequest(requestId);
  const [offer, info] = await w.events.next("offer", (o) => o.requestId === requestId);
  assert.equal(info.duplicate, false);
  assert.match(offer.expiresAt, MS_TIMESTAMP);
  assert.ok(Number.isSafeInteger(offer.seq) && offer.seq > 0);
  assert.equal(offer.attempt, 1);
  assert.equal(offer.job.description, "Corte de pasto");
  assert.equal(offer.job.currency, "ARS");
  assert.ok(offer.job.workerNetCents > 0);

  const accepted = await w.client.acceptOffer(offer);
  assert.equal(accepted.status, "ASSIGNED");
  assert.equal(accepted.offerId, offer.offerId);
  assert.equal(accepted.requestId, requestId);
  assert.equal(accepted.job.address, "Av. Corrientes 1234");
  await w.events.next("assignmentConfirmed", (d) => d.requestId === requestId);
  // A retry of the same accept (same idempotency key, kept per offer) gets the same answer.
  assert.deepEqual(await w.client.acceptOffer(offer), accepted);
  assert.ok(w.client.lastSeq >= offer.seq, "the acknowledged seq is recorded for lastSeq");

  assert.deepEqual(await w.client.startJob(requestId), { requestId, status: "IN_PROGRESS" });
  await w.events.next("jobUpdate", (d) => d.requestId === requestId && d.status === "IN_PROGRESS");
  assert.deepEqual(await w.client.completeJob(requestId), { requestId, status: "COMPLETED" });
  await w.events.next("jobUpdate", (d) => d.requestId === requestId && d.status === "COMPLETED");
  await assert.rejects(w.client.completeJob(requestId), (e: unknown) => e instanceof WorkerProtocolError && e.code === "ILLEGAL_STATE");
});

test("reject moves the request on to the next worker", async () => {
  const a = await live.worker();
  const b = await live.worker();
  await a.client.connect();
  await b.client.connect();
  await a.client.goOnline({ ...BA });
  await b.client.goOnline({ lat: BA.lat - 0.004, lon: BA.lon - 0.004 });
  const requestId = await live.engine().createRequest();
  live.cleanupRequest(requestId);
  const first = await Promise.race([
    a.events.next("offer", (o) => o.requestId === requestId).then(([o]) => ({ o, who: a, other: b })),
    b.events.next("offer", (o) => o.requestId === requestId).then(([o]) => ({ o, who: b, other: a })),
  ]);
  const answer = await first.who.client.rejectOffer(first.o, "too far");
  assert.deepEqual(answer, { offerId: first.o.offerId, requestId });
  const [second] = await first.other.events.next("offer", (o) => o.requestId === requestId);
  assert.notEqual(second.offerId, first.o.offerId);
  assert.equal(second.attempt, 2);
  await first.other.client.rejectOffer(second);
  // Rejected offers are not pending any more.
  await assert.rejects(first.who.client.rejectOffer(first.o), (e: unknown) => e instanceof WorkerProtocolError && e.code === "OFFER_NOT_PENDING");
});

test("a bad message gets a typed error frame with its code and replyTo; the session stays up", async () => {
  const w = await live.worker();
  await w.client.connect();
  await assert.rejects(w.client.ackOffer({ offerId: "not-a-uuid" }), (e: unknown) => {
    assert.ok(e instanceof WorkerProtocolError, String(e));
    assert.equal(e.code, "INVALID_MESSAGE");
    assert.match(e.replyTo ?? "", /^c-\d+$/);
    return true;
  });
  await assert.rejects(w.client.requestRaw("launch_rocket", {}), (e: unknown) => e instanceof WorkerProtocolError && e.code === "UNKNOWN_TYPE");
  await assert.rejects(
    w.client.acceptOffer({ offerId: "00000000-0000-4000-8000-000000000000", requestId: "00000000-0000-4000-8000-000000000001" }),
    (e: unknown) => e instanceof WorkerProtocolError && ["OFFER_NOT_PENDING", "NOT_FOUND"].includes(e.code),
  );
  // Too large: the id was readable, so the error still answers it (replyTo).
  const big = w.client.requestRaw("ping", { pad: "x".repeat(5000) });
  await assert.rejects(big, (e: unknown) => e instanceof WorkerProtocolError && e.code === "MESSAGE_TOO_LARGE" && e.replyTo !== undefined);
  // location is answered only when refused: here before go_online.
  w.client.location({ ...BA, timestamp: new Date().toISOString() });
  const [refused] = await w.events.next("errorFrame", (e) => e.code === "NOT_ONLINE");
  assert.ok(refused.replyTo);
  await w.client.ping();
  assert.equal(w.client.state, "ready");
});

test("a booked offer carries its slot, the assignee is reminded, and cancelAssignment gives the job back", async () => {
  const w = await live.worker();
  await w.client.connect();
  await w.client.goOnline({ ...BA, skills: ["lawn_mowing"] });
  // Starts in 30 minutes: dispatched at once, and the hour-ahead reminder is due on accept.
  const start = new Date(Math.floor(Date.now() / 1000) * 1000 + 30 * 60_000);
  const end = new Date(start.getTime() + 2 * 3600_000);
  const requestId = await live.engine().createRequest({ scheduledStart: start.toISOString(), scheduledEnd: end.toISOString() });
  live.cleanupRequest(requestId);
  const [offer] = await w.events.next("offer", (o) => o.requestId === requestId);
  assert.equal(Date.parse(offer.job.scheduledStart ?? ""), start.getTime());
  assert.equal(Date.parse(offer.job.scheduledEnd ?? ""), end.getTime());
  assert.equal((await w.client.acceptOffer(offer)).status, "ASSIGNED");
  const [reminder] = await w.events.next("jobReminder", (d) => d.requestId === requestId);
  assert.equal(Date.parse(reminder.scheduledStart), start.getTime());
  assert.deepEqual(await w.client.cancelAssignment(requestId, "double booked"), { requestId, status: "PENDING" });
  // Nobody else is online: the request ends UNASSIGNED, and there is nothing to give back.
  await assert.rejects(w.client.cancelAssignment(requestId), (e: unknown) => e instanceof WorkerProtocolError && e.code === "ILLEGAL_STATE");
});

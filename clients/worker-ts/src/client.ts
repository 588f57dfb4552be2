// A small typed client of the worker WebSocket protocol (docs/worker-protocol.md).
//
//   const client = new WorkerClient({ url, token: () => fetchToken(), lastSeq: stored });
//   client.on("offer", (offer, { duplicate }) => { ... });
//   await client.connect();                        // resolves with the first auth_ok
//   await client.goOnline({ lat, lon });           // skills optional
//   const job = await client.acceptOffer(offer);   // one idempotency key per offer, reused on retry
//
// One socket at a time, one heartbeat timer, one reconnect timer: a reconnect replaces both,
// never adds one. Requests carry an `id`; answers are matched by `replyTo`; `error` frames
// reject with a WorkerProtocolError carrying the error `code`.

import { EventEmitter } from "node:events";
import { randomUUID } from "node:crypto";
import WebSocket from "ws";

import {
  Answers,
  AuthOkData,
  CloseCode,
  ClientMessages,
  ClientMessageType,
  ErrorCode,
  ErrorData,
  GoOnlineData,
  JobUpdateData,
  JobReminderData,
  AssignmentRevokedData,
  LocationData,
  OfferData,
  OfferWithdrawnData,
  AssignmentConfirmedData,
  PROTOCOL_VERSION,
  RATE_LIMIT_CLOSE_REASON,
  ServerFrame,
} from "./protocol";

/** An `error` frame answering one of our requests (the session stays up). */
export class WorkerProtocolError extends Error {
  readonly code: ErrorCode;
  readonly replyTo: string | undefined;
  constructor(data: ErrorData, replyTo: string | undefined) {
    super(`${data.code}: ${data.message}`);
    this.name = "WorkerProtocolError";
    this.code = data.code;
    this.replyTo = replyTo;
  }
}

/** The connection ended before the answer came; the request may or may not have been done. */
export class ConnectionLostError extends Error {
  constructor(readonly closeCode: number, readonly closeReason: string) {
    super(`connection closed (${closeCode}${closeReason ? ` ${closeReason}` : ""}) before the answer`);
    this.name = "ConnectionLostError";
  }
}

export class RequestTimeoutError extends Error {
  constructor(readonly type: string, readonly id: string) {
    super(`no answer to ${type} (id ${id}) in time`);
    this.name = "RequestTimeoutError";
  }
}

/** The client stopped for good (4001, 4005, an auth failure, or close()). */
export class ClientStoppedError extends Error {
  constructor(readonly reason: StopReason) {
    super(`worker client stopped: ${reason.kind} (${reason.code} ${reason.reason})`);
    this.name = "ClientStoppedError";
  }
}

export type TokenSource = string | (() => string | Promise<string>);

export interface BackoffOptions {
  /** First retry delay after a failed reconnect, ms (1000). */
  initialMs?: number;
  /** Cap, ms (30000). */
  maxMs?: number;
  /** The first reconnect after a lost connection waits at most this (jittered), ms (250). */
  firstMs?: number;
}

export interface WorkerClientOptions {
  /** e.g. wss://engine.arreglame.example/ws/worker */
  url: string;
  /** A worker JWT, or a function giving a fresh one (called on each connect and refresh). */
  token: TokenSource;
  /** Highest offer seq already processed (persist `client.lastSeq` via onLastSeq). */
  lastSeq?: number;
  /** Called whenever lastSeq grows, to persist it. */
  onLastSeq?: (seq: number) => void;
  /** Acknowledge every offer as soon as it arrives (true). */
  autoAck?: boolean;
  /** Reconnect after a lost connection (true). */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** Wait at least this long after the rate-limit close (1008) before reconnecting, ms (5000). */
  rateLimitPauseMs?: number;
  /** Time to wait for each answer, ms (15000). */
  requestTimeoutMs?: number;
  /**
   * With a token function: refresh the token on the live session this long before it
   * expires, ms (60000; 0 disables). Without a function the session ends with 4003.
   */
  refreshBeforeExpiryMs?: number;
  /** Go online again after a reconnect when the engine no longer has us online (true). */
  resumeOnline?: boolean;
  /** Random source in [0, 1) for the jitter (Math.random). */
  random?: () => number;
}

export type ClientState = "idle" | "connecting" | "authenticating" | "ready" | "waiting" | "stopped";

export type StopKind = "closed" | "replaced" | "deactivated" | "auth_failed" | "token_expired" | "client_bug";
export interface StopReason {
  kind: StopKind;
  code: number;
  reason: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** ms until the next attempt, or null when the client stopped. */
  reconnectInMs: number | null;
}

export interface WorkerClientEvents {
  /** Every auth_ok: the first of a connection (`refresh: false`) or a token refresh. */
  authenticated: [data: AuthOkData, info: { refresh: boolean; reconnect: boolean }];
  /** An offer; `duplicate` when this offerId was already delivered (resent after a reconnect). */
  offer: [offer: OfferData, info: { duplicate: boolean }];
  offerWithdrawn: [data: OfferWithdrawnData];
  assignmentConfirmed: [data: AssignmentConfirmedData];
  jobUpdate: [data: JobUpdateData];
  /** A booked job of ours starts soon (job_reminder_minutes before its slot). */
  jobReminder: [data: JobReminderData];
  /** A job of ours was taken back (reason `no_show`). */
  assignmentRevoked: [data: AssignmentRevokedData];
  /** An error frame that answers no pending request (e.g. a refused location, or no replyTo). */
  errorFrame: [error: WorkerProtocolError];
  /** The socket closed. */
  disconnected: [info: CloseInfo];
  /** A reconnect attempt is scheduled. */
  reconnecting: [info: { attempt: number; delayMs: number; afterCode: number; afterReason: string }];
  /** The client will not reconnect (4001, 4005, auth failure, close()). */
  stopped: [reason: StopReason];
  /** A frame the client could not use (not JSON, unknown type); for logs. */
  unknownFrame: [text: string];
}

interface Pending {
  type: ClientMessageType;
  resolve: (data: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class WorkerClient extends EventEmitter<WorkerClientEvents> {
  private readonly opts: Required<Omit<WorkerClientOptions, "onLastSeq" | "backoff">> & {
    onLastSeq?: (seq: number) => void;
    backoff: Required<BackoffOptions>;
  };
  private ws: WebSocket | null = null;
  private token: string | null = null;
  private nextId = 0;
  private readonly pending = new Map<string, Pending>();
  private heartbeat: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private refreshTimer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private authId: string | null = null;
  private everAuthenticated = false;
  private wantOnline: GoOnlineData | null = null;
  private readonly seenOffers = new Set<string>();
  private readonly acceptKeys = new Map<string, string>();
  private firstAuth: { resolve: (d: AuthOkData) => void; reject: (e: Error) => void } | null = null;

  private _state: ClientState = "idle";
  private _lastSeq: number;
  private _session: AuthOkData | null = null;
  private _heartbeatIntervalMs: number | null = null;
  private _stopReason: StopReason | null = null;
  /** Counters, for diagnostics and tests. */
  readonly stats = { sockets: 0, pingsSent: 0, heartbeatTimersStarted: 0 };

  constructor(options: WorkerClientOptions) {
    super();
    this.opts = {
      url: options.url,
      token: options.token,
      lastSeq: options.lastSeq ?? 0,
      onLastSeq: options.onLastSeq,
      autoAck: options.autoAck ?? true,
      reconnect: options.reconnect ?? true,
      backoff: {
        initialMs: options.backoff?.initialMs ?? 1000,
        maxMs: options.backoff?.maxMs ?? 30000,
        firstMs: options.backoff?.firstMs ?? 250,
      },
      rateLimitPauseMs: options.rateLimitPauseMs ?? 5000,
      requestTimeoutMs: options.requestTimeoutMs ?? 15000,
      refreshBeforeExpiryMs: options.refreshBeforeExpiryMs ?? 60000,
      resumeOnline: options.resumeOnline ?? true,
      random: options.random ?? Math.random,
    };
    this._lastSeq = this.opts.lastSeq;
  }

  get state(): ClientState {
    return this._state;
  }
  /** The highest offer seq processed (acknowledged); send as lastSeq on reconnect. */
  get lastSeq(): number {
    return this._lastSeq;
  }
  /** The current session's auth_ok (updated by refreshes), or null. */
  get session(): AuthOkData | null {
    return this._session;
  }
  /** The heartbeat period in use (from the connection's first auth_ok). */
  get heartbeatIntervalMs(): number | null {
    return this._heartbeatIntervalMs;
  }
  /** Whether a heartbeat timer is running (at most one ever is). */
  get heartbeatRunning(): boolean {
    return this.heartbeat !== null;
  }
  get reconnectScheduled(): boolean {
    return this.reconnectTimer !== null;
  }
  get stopReason(): StopReason | null {
    return this._stopReason;
  }

  /** Opens the session; resolves with the first auth_ok, rejects if the client stops first. */
  connect(): Promise<AuthOkData> {
    if (this._state === "stopped") return Promise.reject(new ClientStoppedError(this._stopReason!));
    if (this._session && this._state === "ready") return Promise.resolve(this._session);
    const p = new Promise<AuthOkData>((resolve, reject) => {
      const prev = this.firstAuth;
      this.firstAuth = {
        resolve: (d) => {
          prev?.resolve(d);
          resolve(d);
        },
        reject: (e) => {
          prev?.reject(e);
          reject(e);
        },
      };
    });
    if (this._state === "idle") void this.open();
    return p;
  }

  /** Stops for good: no reconnect; pending requests fail. Does not go offline first. */
  close(): void {
    this.stop({ kind: "closed", code: CloseCode.NORMAL, reason: "closed by the app" });
  }

  /** Drops the socket without a close handshake, as a lost network would (reconnects). */
  dropConnection(): void {
    this.ws?.terminate();
  }

  // ---- requests ------------------------------------------------------------------------

  goOnline(data: GoOnlineData): Promise<Answers["go_online"]> {
    this.wantOnline = data;
    return this.request("go_online", data);
  }
  async goOffline(): Promise<Answers["go_offline"]> {
    this.wantOnline = null;
    return this.request("go_offline", undefined);
  }
  /** Not answered when taken; a refusal arrives as an `errorFrame` event. */
  location(data: LocationData): void {
    this.sendFrame("location", data, this.newId());
  }
  ping(): Promise<Answers["ping"]> {
    return this.request("ping", undefined);
  }
  /** Acknowledges the offer and records its seq as processed. */
  async ackOffer(offer: Pick<OfferData, "offerId"> & Partial<Pick<OfferData, "seq">>): Promise<Answers["ack_offer"]> {
    const answer = await this.request("ack_offer", { offerId: offer.offerId });
    if (typeof offer.seq === "number") this.processed(offer.seq);
    return answer;
  }
  /**
   * Accepts. The idempotency key is kept per offer, so a retry of this call (after a timeout
   * or a reconnect) reuses it; pass one to control it yourself.
   */
  acceptOffer(offer: Pick<OfferData, "offerId" | "requestId">, idempotencyKey?: string): Promise<Answers["accept_offer"]> {
    let key = idempotencyKey ?? this.acceptKeys.get(offer.offerId);
    if (!key) key = randomUUID();
    this.acceptKeys.set(offer.offerId, key);
    return this.request("accept_offer", { offerId: offer.offerId, requestId: offer.requestId, idempotencyKey: key });
  }
  rejectOffer(offer: Pick<OfferData, "offerId" | "requestId">, reason?: string): Promise<Answers["reject_offer"]> {
    const data = reason === undefined ? { offerId: offer.offerId, requestId: offer.requestId } : { offerId: offer.offerId, requestId: offer.requestId, reason };
    return this.request("reject_offer", data) as Promise<Answers["reject_offer"]>;
  }
  startJob(requestId: string): Promise<Answers["start_job"]> {
    return this.request("start_job", { requestId });
  }
  completeJob(requestId: string): Promise<Answers["complete_job"]> {
    return this.request("complete_job", { requestId });
  }
  /** Gives an accepted job back before starting it (a strike against the worker). */
  cancelAssignment(requestId: string, reason?: string): Promise<Answers["cancel_assignment"]> {
    return this.request("cancel_assignment", reason === undefined ? { requestId } : { requestId, reason });
  }
  /**
   * Refreshes the token on the live session. The answer is a full auth_ok; the heartbeat
   * keeps its timer and period.
   */
  async refreshToken(token?: string): Promise<AuthOkData> {
    const fresh = token ?? (await this.resolveToken());
    const answer = await this.request("auth", { token: fresh });
    this.token = fresh;
    return answer;
  }

  /** Sends a message and resolves with its answer (ok / auth_ok / pong data). */
  request<T extends ClientMessageType>(type: T, data: ClientMessages[T]): Promise<Answers[T]> {
    return this.requestRaw(type, data) as Promise<Answers[T]>;
  }

  /** Like request() for any type string (an engine newer than this client, or tests). */
  requestRaw(type: string, data?: unknown): Promise<unknown> {
    const id = this.newId();
    return new Promise((resolve, reject) => {
      if (this._state === "stopped") return reject(new ClientStoppedError(this._stopReason!));
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN || (this._state !== "ready" && type !== "auth")) {
        return reject(new ConnectionLostError(1006, "not connected"));
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RequestTimeoutError(type, id));
      }, this.opts.requestTimeoutMs);
      this.pending.set(id, { type: type as ClientMessageType, resolve, reject, timer });
      this.sendFrame(type, data, id);
    });
  }

  // ---- internals -----------------------------------------------------------------------

  private newId(): string {
    this.nextId += 1;
    return `c-${this.nextId}`;
  }

  private sendFrame(type: string, data: unknown, id?: string): void {
    const frame: Record<string, unknown> = { v: PROTOCOL_VERSION, type };
    if (id !== undefined) frame.id = id;
    if (data !== undefined) frame.data = data;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  private processed(seq: number): void {
    if (seq > this._lastSeq) {
      this._lastSeq = seq;
      this.opts.onLastSeq?.(seq);
    }
  }

  private async resolveToken(): Promise<string> {
    const t = this.opts.token;
    return typeof t === "function" ? await t() : t;
  }

  private async open(): Promise<void> {
    this.clearReconnect();
    this._state = "connecting";
    let token: string;
    try {
      // A fresh token per connection when we have a source of them (and after 4003).
      token = this.token && typeof this.opts.token !== "function" ? this.token : await this.resolveToken();
    } catch (e) {
      this.scheduleReconnect(1006, `token source failed: ${(e as Error).message}`);
      return;
    }
    if (this._state !== "connecting") return; // stopped meanwhile
    this.token = token;
    const ws = new WebSocket(this.opts.url);
    this.ws = ws;
    this.stats.sockets += 1;
    ws.on("open", () => {
      if (this.ws !== ws) return;
      this._state = "authenticating";
      this.authId = this.newId();
      this.sendFrame("auth", { token, lastSeq: this._lastSeq }, this.authId);
    });
    ws.on("message", (raw, isBinary) => {
      if (this.ws !== ws) return;
      this.onFrame(isBinary ? "" : raw.toString());
    });
    ws.on("error", () => {
      // Always followed by "close"; handled there.
    });
    ws.on("close", (code, reasonBuf) => {
      if (this.ws !== ws) return;
      this.onClose(code, reasonBuf.toString());
    });
  }

  private onFrame(text: string): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("unknownFrame", text);
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") {
      this.emit("unknownFrame", text);
      return;
    }
    switch (frame.type) {
      case "auth_ok":
        this.onAuthOk(frame as ServerFrame<"auth_ok">);
        return;
      case "ok":
      case "pong":
        this.settle(frame.replyTo, (p) => p.resolve(frame.data));
        return;
      case "error": {
        const err = new WorkerProtocolError(frame.data as ErrorData, frame.replyTo);
        if (!this.settle(frame.replyTo, (p) => p.reject(err))) this.emit("errorFrame", err);
        return;
      }
      case "offer": {
        const offer = frame.data as OfferData;
        const duplicate = this.seenOffers.has(offer.offerId);
        this.seenOffers.add(offer.offerId);
        if (this.opts.autoAck) {
          this.ackOffer(offer).catch((e) => {
            if (e instanceof WorkerProtocolError) this.emit("errorFrame", e);
          });
        }
        this.emit("offer", offer, { duplicate });
        return;
      }
      case "offer_withdrawn":
        this.emit("offerWithdrawn", frame.data as OfferWithdrawnData);
        return;
      case "assignment_confirmed":
        this.emit("assignmentConfirmed", frame.data as AssignmentConfirmedData);
        return;
      case "job_update":
        this.emit("jobUpdate", frame.data as JobUpdateData);
        return;
      case "job_reminder":
        this.emit("jobReminder", frame.data as JobReminderData);
        return;
      case "assignment_revoked":
        this.emit("assignmentRevoked", frame.data as AssignmentRevokedData);
        return;
      default:
        this.emit("unknownFrame", text); // a newer engine: ignore unknown types
    }
  }

  /** Resolves the pending request answered by replyTo; false when there is none. */
  private settle(replyTo: string | undefined, how: (p: Pending) => void): boolean {
    if (replyTo === undefined) return false;
    const p = this.pending.get(replyTo);
    if (!p) return false;
    this.pending.delete(replyTo);
    clearTimeout(p.timer);
    how(p);
    return true;
  }

  private onAuthOk(frame: ServerFrame<"auth_ok">): void {
    const data = frame.data;
    const first = this._state === "authenticating" && (frame.replyTo === undefined || frame.replyTo === this.authId);
    if (first) {
      // The first auth_ok of this connection sets the heartbeat; one timer, replaced, never added.
      this._state = "ready";
      this._session = data;
      this.attempt = 0;
      this.startHeartbeat(data.heartbeatIntervalMs);
      this.scheduleRefresh(data.tokenExpiresAt);
      const reconnect = this.everAuthenticated;
      this.everAuthenticated = true;
      this.emit("authenticated", data, { refresh: false, reconnect });
      const fa = this.firstAuth;
      this.firstAuth = null;
      fa?.resolve(data);
      if (reconnect && this.opts.resumeOnline && this.wantOnline && !data.onlineCity) {
        this.request("go_online", this.wantOnline).catch((e) => {
          if (e instanceof WorkerProtocolError) this.emit("errorFrame", e);
        });
      }
      return;
    }
    // A token refresh: a full auth_ok, but the heartbeat stays as it is (period and timer).
    this._session = { ...data, heartbeatIntervalMs: this._session?.heartbeatIntervalMs ?? data.heartbeatIntervalMs };
    this.scheduleRefresh(data.tokenExpiresAt);
    this.settle(frame.replyTo, (p) => p.resolve(data));
    this.emit("authenticated", data, { refresh: true, reconnect: false });
  }

  private startHeartbeat(intervalMs: number): void {
    this.stopHeartbeat();
    const period = Number.isFinite(intervalMs) && intervalMs > 0 ? intervalMs : 20000;
    this._heartbeatIntervalMs = period;
    this.stats.heartbeatTimersStarted += 1;
    this.heartbeat = setInterval(() => {
      this.stats.pingsSent += 1;
      // A ping without waiting on it: the answer (pong) is matched or ignored.
      this.sendFrame("ping", undefined, this.newId());
    }, period);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  private scheduleRefresh(tokenExpiresAt: string): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const lead = this.opts.refreshBeforeExpiryMs;
    if (typeof this.opts.token !== "function" || lead <= 0) return;
    const remaining = Date.parse(tokenExpiresAt) - Date.now();
    if (!Number.isFinite(remaining)) return;
    const delay = Math.max(0, Math.min(remaining - lead, remaining / 2));
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      this.refreshToken().catch(() => {
        // If the refresh fails the session ends with 4003 and the reconnect gets a new token.
      });
    }, Math.min(delay, 2 ** 31 - 1));
  }

  private onClose(code: number, reason: string): void {
    this.ws = null;
    this.stopHeartbeat();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const lost = new ConnectionLostError(code, reason);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(lost);
    }
    if (this._state === "stopped") {
      this.emit("disconnected", { code, reason, reconnectInMs: null });
      return;
    }
    const stop = this.classifyClose(code, reason);
    if (stop) {
      this.emit("disconnected", { code, reason, reconnectInMs: null });
      this.stop(stop);
      return;
    }
    if (code === CloseCode.TOKEN_EXPIRED) this.token = null; // get a fresh one
    const delay = this.scheduleReconnect(code, reason);
    this.emit("disconnected", { code, reason, reconnectInMs: delay });
  }

  /** The closes after which reconnecting would not help (or would do harm). */
  private classifyClose(code: number, reason: string): StopReason | null {
    if (!this.opts.reconnect) return { kind: "closed", code, reason };
    switch (code) {
      case CloseCode.REPLACED:
        return { kind: "replaced", code, reason };
      case CloseCode.DEACTIVATED:
        return { kind: "deactivated", code, reason };
      case CloseCode.POLICY_VIOLATION:
        if (reason === RATE_LIMIT_CLOSE_REASON) return null; // pause, then reconnect
        return { kind: "auth_failed", code, reason };
      case CloseCode.TOKEN_EXPIRED:
        // Only a token source can give a fresh token.
        return typeof this.opts.token === "function" ? null : { kind: "token_expired", code, reason };
      case CloseCode.INVALID_PAYLOAD:
      case CloseCode.MESSAGE_TOO_BIG:
        return { kind: "client_bug", code, reason };
      default:
        return null; // 1001, 1006 (network), 1011, 1013, 4002, 4004, ...: back off and resume
    }
  }

  /** Exponential backoff with jitter; one timer at a time (a new schedule replaces the old). */
  private scheduleReconnect(code: number, reason: string): number {
    this.clearReconnect();
    this._state = "waiting";
    const { initialMs, maxMs, firstMs } = this.opts.backoff;
    const r = this.opts.random();
    let delay: number;
    if (this.attempt === 0 && code !== CloseCode.GOING_AWAY && code !== CloseCode.TRY_AGAIN_LATER) {
      delay = Math.round(firstMs * r); // a lost connection: at once (spread a little)
    } else {
      const base = Math.min(maxMs, initialMs * 2 ** Math.max(0, this.attempt - 1));
      delay = Math.round(base / 2 + (base / 2) * r); // "equal jitter": [base/2, base]
    }
    if (code === CloseCode.POLICY_VIOLATION) delay = Math.max(delay, this.opts.rateLimitPauseMs);
    this.attempt += 1;
    this.emit("reconnecting", { attempt: this.attempt, delayMs: delay, afterCode: code, afterReason: reason });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
    return delay;
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private stop(reason: StopReason): void {
    if (this._state === "stopped") return;
    this._state = "stopped";
    this._stopReason = reason;
    this.clearReconnect();
    this.stopHeartbeat();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const ws = this.ws;
    if (ws) {
      // Keep listening for its close (to fail pending requests), but never act on it.
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(CloseCode.NORMAL);
      // Give the engine a moment for the close handshake, then drop the socket.
      setTimeout(() => ws.terminate(), 1000).unref();
    }
    const err = new ClientStoppedError(reason);
    const fa = this.firstAuth;
    this.firstAuth = null;
    fa?.reject(err);
    if (!ws) {
      for (const [id, p] of this.pending) {
        clearTimeout(p.timer);
        this.pending.delete(id);
        p.reject(err);
      }
    }
    this.emit("stopped", reason);
  }
}

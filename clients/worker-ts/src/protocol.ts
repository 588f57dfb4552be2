// Types of the worker WebSocket protocol, version 1 (docs/worker-protocol.md, the contract;
// docs/asyncapi.yaml, the same in AsyncAPI 3.0). The interface names are the component
// schema names of docs/asyncapi.yaml, so they match what @asyncapi/modelina generates
// (`npm run check-models` generates them and checks every one is named).

export const PROTOCOL_VERSION = 1 as const;

/** RFC 3339 in UTC with exactly milliseconds, as the engine sends every time. */
export type WireTimestamp = string;
export type Uuid = string;

export type RequestStatus =
  | "SCHEDULED"
  | "PENDING"
  | "OFFERING"
  | "ASSIGNED"
  | "IN_PROGRESS"
  | "COMPLETED"
  | "CANCELLED"
  | "UNASSIGNED";

export const ERROR_CODES = [
  "MALFORMED_JSON",
  "INVALID_ENVELOPE",
  "UNSUPPORTED_VERSION",
  "UNKNOWN_TYPE",
  "INVALID_MESSAGE",
  "BINARY_NOT_SUPPORTED",
  "MESSAGE_TOO_LARGE",
  "INVALID_COORDINATES",
  "OUTSIDE_SERVICE_AREA",
  "NOT_ONLINE",
  "RATE_LIMITED",
  "NOT_YOUR_OFFER",
  "OFFER_NOT_PENDING",
  "NOT_YOUR_JOB",
  "ILLEGAL_STATE",
  "NOT_FOUND",
  "IDEMPOTENCY_KEY_REUSED",
  "NO_MATCHING_SKILLS",
  "SLOT_STARTED",
  "CONFLICT",
  "UNAVAILABLE",
  "INTERNAL",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Close codes the engine sends (src/gateway/protocol.rs `close`). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  REPLACED: 4001,
  HEARTBEAT_TIMEOUT: 4002,
  TOKEN_EXPIRED: 4003,
  SLOW_CONSUMER: 4004,
  DEACTIVATED: 4005,
} as const;

/** The reason text of the abuse close (1008). */
export const RATE_LIMIT_CLOSE_REASON = "message rate limit exceeded";

// ---- app → engine ----------------------------------------------------------------------

export interface AuthData {
  token: string;
  /** Highest offer `seq` processed (0 after a fresh install). */
  lastSeq?: number;
}
export interface GoOnlineData {
  lat: number;
  lon: number;
  /** Optional: narrows the profile's skills for this session; absent = all of them. */
  skills?: string[];
}
export interface LocationData {
  lat: number;
  lon: number;
  accuracy?: number;
  /** RFC 3339; any precision. */
  timestamp: string;
}
export interface OfferRef {
  offerId: Uuid;
}
export interface AcceptOfferData {
  offerId: Uuid;
  requestId: Uuid;
  idempotencyKey: string;
}
export interface RejectOfferData {
  offerId: Uuid;
  requestId: Uuid;
  reason?: string;
}
export interface JobRef {
  requestId: Uuid;
}
export interface CancelAssignmentData {
  requestId: Uuid;
  /** Kept with the strike the cancellation records against the worker. */
  reason?: string;
}

/** Every app → engine message type and its `data`. */
export interface ClientMessages {
  auth: AuthData;
  go_online: GoOnlineData;
  go_offline: undefined;
  location: LocationData;
  ack_offer: OfferRef;
  accept_offer: AcceptOfferData;
  reject_offer: RejectOfferData;
  start_job: JobRef;
  complete_job: JobRef;
  cancel_assignment: CancelAssignmentData;
  ping: undefined;
}
export type ClientMessageType = keyof ClientMessages;

// ---- engine → app ----------------------------------------------------------------------

export interface SessionLimits {
  maxMessageBytes: number;
  locationPerSecond: number;
  locationBurst: number;
  messagesPerSecond: number;
  messagesBurst: number;
}
export interface AuthOkData {
  workerId: Uuid;
  sessionId: number;
  protocolVersion: number;
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  tokenExpiresAt: WireTimestamp;
  onlineCity: string | null;
  limits: SessionLimits;
}
export interface OnlineResult {
  cityId: string;
  skills?: string[];
  ignoredSkills?: string[];
}
export interface AcceptedJob {
  description?: string | null;
  address?: string | null;
  latitude?: number | null;
  longitude?: number | null;
  squareMeters?: number | null;
  workerNetCents?: number | null;
  currency: string;
}
export interface AcceptResult {
  offerId: Uuid;
  requestId: Uuid;
  status: RequestStatus;
  job: AcceptedJob;
}
export interface OfferResult {
  offerId: Uuid;
  requestId?: Uuid;
}
export interface JobResult {
  requestId: Uuid;
  status: RequestStatus;
}
export type EmptyResult = Record<string, never>;
export interface ErrorData {
  code: ErrorCode;
  message: string;
}
export interface PongData {
  serverTime: WireTimestamp;
}
export interface JobSummary {
  description: string;
  squareMeters: number;
  workerNetCents: number;
  currency: string;
  distanceMeters: number;
  area: string;
  latitude: number;
  longitude: number;
  /** The booked slot; null for a job wanted now. */
  scheduledStart: WireTimestamp | null;
  scheduledEnd: WireTimestamp | null;
}
export interface OfferData {
  /** 64-bit on the wire; exact in a JavaScript number up to 2^53 (ms since 1970 fits). */
  seq: number;
  offerId: Uuid;
  requestId: Uuid;
  attempt: number;
  expiresAt: WireTimestamp;
  job: JobSummary;
}
export type WithdrawnReason = "expired" | "cancelled" | "unassigned" | "taken" | (string & {});
export interface OfferWithdrawnData {
  offerId: Uuid;
  requestId: Uuid;
  reason: WithdrawnReason;
}
export interface AssignmentConfirmedData {
  offerId: Uuid;
  requestId: Uuid;
}
export interface JobUpdateData {
  requestId: Uuid;
  status: RequestStatus | (string & {});
}
export interface JobReminderData {
  requestId: Uuid;
  scheduledStart: WireTimestamp;
  scheduledEnd: WireTimestamp;
}
export type RevokedReason = "no_show" | (string & {});
export interface AssignmentRevokedData {
  requestId: Uuid;
  reason: RevokedReason;
}

/** Every engine → app message type and its `data`. */
export interface ServerMessages {
  auth_ok: AuthOkData;
  ok: OnlineResult | AcceptResult | OfferResult | JobResult | EmptyResult;
  error: ErrorData;
  pong: PongData;
  offer: OfferData;
  offer_withdrawn: OfferWithdrawnData;
  assignment_confirmed: AssignmentConfirmedData;
  job_update: JobUpdateData;
  job_reminder: JobReminderData;
  assignment_revoked: AssignmentRevokedData;
}
export type ServerMessageType = keyof ServerMessages;

export interface ServerFrame<T extends ServerMessageType = ServerMessageType> {
  v: 1;
  type: T;
  replyTo?: string;
  data: ServerMessages[T];
}

/** What the `ok` (or `auth_ok`, `pong`) answering each request carries. */
export interface Answers {
  auth: AuthOkData;
  go_online: OnlineResult;
  go_offline: EmptyResult;
  location: never;
  ack_offer: OfferResult;
  accept_offer: AcceptResult;
  reject_offer: Required<OfferResult>;
  start_job: JobResult;
  complete_job: JobResult;
  cancel_assignment: JobResult;
  ping: PongData;
}

// The engine as standard GraphQL tooling sees it, run by scripts/check-graphql-tooling.sh:
//
//   node dist/live-test.js <engine URL> <customer JWT> <repository root>
//
// 1. graphql-js's own `getIntrospectionQuery()` (default options) over HTTP answers, equals
//    the vendored fixture, and the schema it describes has no breaking or dangerous change
//    against docs/schema.graphql;
// 2. the reference `graphql-ws` client (createClient with `ws` as webSocketImpl), with
//    Apollo's connectionParams shape `{headers: {Authorization: "Bearer ..."}}`: the same
//    introspection as a query over the socket, then a request created over HTTP and its
//    `serviceRequestUpdated` subscription, which must deliver at least the snapshot;
// 3. a subscription without a token is closed with 4401.
//
// Every operation comes from operations.graphql and is typed by the code graphql-codegen
// generated from docs/schema.graphql, so this file only compiles if they agree.

import { readFileSync } from "node:fs";
import { join } from "node:path";

import {
  buildClientSchema,
  buildSchema,
  findBreakingChanges,
  findDangerousChanges,
  getIntrospectionQuery,
  specifiedDirectives,
  type IntrospectionQuery,
} from "graphql";
import { createClient, type Client, type ExecutionResult } from "graphql-ws";
import WebSocket from "ws";

import type {
  CreateRequestMutation,
  CreateRequestMutationVariables,
  EstimateJobMutation,
  EstimateJobMutationVariables,
  RequestQuery,
  RequestQueryVariables,
  RequestUpdatesSubscription,
  RequestUpdatesSubscriptionVariables,
} from "./generated/operations.js";
import type { Difficulty, Status } from "./generated/schema.js";

const [engine, token, root] = process.argv.slice(2);
if (!engine || !token || !root) {
  console.error("usage: live-test.js <engine URL> <customer JWT> <repository root>");
  process.exit(2);
}
const http = engine.replace(/\/+$/, "");
const wsUrl = `${http.replace(/^http/, "ws")}/graphql/ws`;
const operations = readFileSync(join(root, "scripts/graphql-tooling/operations.graphql"), "utf8");
const TIMEOUT_MS = 15_000;

let failures = 0;
let passes = 0;
function check(ok: boolean, what: string, detail?: unknown): void {
  if (ok) {
    passes += 1;
    console.log(`ok - ${what}`);
  } else {
    failures += 1;
    console.log(`not ok - ${what}${detail === undefined ? "" : `: ${JSON.stringify(detail)}`}`);
  }
}

function within<T>(promise: Promise<T>, what: string): Promise<T> {
  return Promise.race([
    promise,
    new Promise<T>((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: no answer within ${TIMEOUT_MS} ms`)), TIMEOUT_MS),
    ),
  ]);
}

async function post<Data, Variables>(
  operationName: string,
  variables: Variables,
  auth?: string,
): Promise<ExecutionResult<Data>> {
  const response = await fetch(`${http}/graphql`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(auth ? { authorization: `Bearer ${auth}` } : {}),
    },
    body: JSON.stringify({ query: operations, operationName, variables }),
  });
  return (await response.json()) as ExecutionResult<Data>;
}

function wsClient(connectionParams?: Record<string, unknown>): Client {
  return createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams,
    lazy: true,
    retryAttempts: 0,
  });
}

async function introspection(): Promise<void> {
  const fixture = readFileSync(
    join(root, "tests/fixtures/graphql-js-16.15.0-introspection-query.graphql"),
    "utf8",
  );
  const query = getIntrospectionQuery();
  check(query === fixture, "the fixture is graphql-js's getIntrospectionQuery(), byte for byte");
  const response = await fetch(`${http}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ query, operationName: "IntrospectionQuery" }),
  });
  const answer = (await response.json()) as ExecutionResult<IntrospectionQuery>;
  check(response.status === 200 && !answer.errors && !!answer.data, "introspection over HTTP", answer.errors);
  if (!answer.data) return;
  const live = buildClientSchema(answer.data);
  check(live.getQueryType()?.name === "Query", "root types named Query/Mutation/Subscription", [
    live.getQueryType()?.name,
    live.getMutationType()?.name,
    live.getSubscriptionType()?.name,
  ]);
  const documented = buildSchema(readFileSync(join(root, "docs/schema.graphql"), "utf8"));
  // The built-in directives are graphql-js's own in `documented` (docs/schema.graphql does
  // not define them) and async-graphql's in `live`; their definitions differ across versions
  // (graphql-js 16.15 lets @deprecated mark directive definitions), which is no drift of ours.
  const builtIn = new Set(specifiedDirectives.map((d) => d.name));
  const ours = (change: { type: string; description: string }) =>
    !(change.type.startsWith("DIRECTIVE_") && change.description.split(/[\s.]+/).some((w) => builtIn.has(w)));
  const all = [...findBreakingChanges(documented, live), ...findDangerousChanges(documented, live)];
  for (const change of all.filter((c) => !ours(c))) {
    console.log(`# ignored (a built-in directive): ${change.type} ${change.description}`);
  }
  const breaking = findBreakingChanges(documented, live).filter(ours);
  const dangerous = findDangerousChanges(documented, live).filter(ours);
  check(breaking.length === 0 && dangerous.length === 0, "the live schema matches docs/schema.graphql", {
    breaking,
    dangerous,
  });
}

async function subscription(): Promise<void> {
  const difficulty: Difficulty = "MEDIUM";
  const estimate = await post<EstimateJobMutation, EstimateJobMutationVariables>("EstimateJob", {
    input: { description: "Corte de pasto", squareMeters: 100, difficulty },
  });
  const price = estimate.data?.estimateJob.price;
  check(
    !!price && price.total === price.workerNet + price.platformFee &&
      estimate.data?.estimateJob.breakdown.difficultyLevel === difficulty,
    "estimateJob (typed): the price splits exactly, the difficulty is the enum sent",
    estimate,
  );

  const client = wsClient({ headers: { Authorization: `Bearer ${token}` } });
  try {
    // The standard introspection query, as a query over the same socket.
    const overWs = await within(
      (async () => {
        for await (const result of client.iterate<IntrospectionQuery>({ query: getIntrospectionQuery() })) {
          return result;
        }
        return undefined;
      })(),
      "introspection over graphql-ws",
    );
    check(!!overWs?.data?.__schema && !overWs.errors, "introspection over graphql-ws", overWs?.errors);

    const created = await post<CreateRequestMutation, CreateRequestMutationVariables>(
      "CreateRequest",
      {
        input: {
          latitude: -34.6037,
          longitude: -58.3816,
          address: "Av. Corrientes 1234",
          description: "Corte de pasto (check-graphql-tooling)",
          squareMeters: 80,
        },
      },
      token,
    );
    const id = created.data?.createServiceRequest.id;
    check(!!id && !created.errors, "createServiceRequest as the seeded customer", created);
    if (!id) return;

    const read = await post<RequestQuery, RequestQueryVariables>("Request", { id }, token);
    check(read.data?.serviceRequest?.id === id, "serviceRequest reads it back", read);

    const variables: RequestUpdatesSubscriptionVariables = { id };
    const updates: RequestUpdatesSubscription["serviceRequestUpdated"][] = [];
    const statuses: Status[] = [];
    await within(
      (async () => {
        const iterator = client.iterate<RequestUpdatesSubscription>({
          query: operations,
          operationName: "RequestUpdates",
          variables,
        });
        for await (const result of iterator) {
          if (result.errors || !result.data) {
            check(false, "serviceRequestUpdated delivers data", result.errors);
            break;
          }
          updates.push(result.data.serviceRequestUpdated);
          statuses.push(result.data.serviceRequestUpdated.status);
          break; // the snapshot is enough; leaving the loop completes the subscription
        }
      })(),
      "serviceRequestUpdated",
    );
    const first = updates[0];
    check(
      !!first && first.event === "Snapshot" && first.requestId === id,
      "serviceRequestUpdated over graphql-ws (connectionParams.headers.Authorization): the snapshot first",
      { updates, statuses },
    );
  } finally {
    await client.dispose();
  }
}

async function refusedWithoutToken(): Promise<void> {
  const code = await within(
    new Promise<number>((resolve) => {
      const client = createClient({
        url: wsUrl,
        webSocketImpl: WebSocket,
        retryAttempts: 0,
        on: {
          closed: (event) => {
            resolve((event as { code: number }).code);
          },
        },
      });
      client.subscribe(
        { query: "subscription { serviceRequestUpdated(id: \"00000000-0000-4000-8000-000000000000\") { status } }" },
        { next: () => {}, error: () => {}, complete: () => {} },
      );
    }),
    "an anonymous subscription",
  );
  check(code === 4401, "no token in connection_init: closed with 4401", code);
}

/// graphql-ws rejects with the socket's CloseEvent when the server closes the connection.
function describe(error: unknown): string {
  if (error instanceof Error) return error.stack ?? error.message;
  const close = error as { code?: number; reason?: string };
  if (typeof close?.code === "number") return `the socket closed: ${close.code} ${close.reason ?? ""}`.trim();
  return JSON.stringify(error);
}

(async () => {
  for (const [name, step] of [
    ["introspection", introspection],
    ["subscription", subscription],
    ["anonymous", refusedWithoutToken],
  ] as const) {
    try {
      await step();
    } catch (error) {
      check(false, `${name} threw`, describe(error));
    }
  }
  console.log(`graphql-tooling: ${passes} passed, ${failures} failed`);
  process.exit(failures === 0 ? 0 : 1);
})();

#!/usr/bin/env bash
# Validates docs/asyncapi.yaml (the worker WebSocket protocol, AsyncAPI 3.0) with the
# standard AsyncAPI parser, @asyncapi/parser from npm. The parser is installed once into
# target/asyncapi-check (npm install --prefix) and run with node.
#
#   scripts/check-asyncapi.sh [file]      exit status 0: valid; 1: errors (printed); 2: setup failed
#
# Warnings and hints are printed but do not fail the check; errors do. Beyond the parser's
# own rules, every message example must validate against its message's payload schema
# (ajv, which the parser already depends on), so the documented examples cannot drift
# from the schemas.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
spec="${1:-$root/docs/asyncapi.yaml}"
dir="$root/target/asyncapi-check"
version="${ASYNCAPI_PARSER_VERSION:-3.6.3}"

command -v node >/dev/null || { echo "check-asyncapi: node is required" >&2; exit 2; }
command -v npm >/dev/null || { echo "check-asyncapi: npm is required" >&2; exit 2; }
[ -f "$spec" ] || { echo "check-asyncapi: $spec not found" >&2; exit 2; }

installed="$(node -p "require('$dir/node_modules/@asyncapi/parser/package.json').version" 2>/dev/null || true)"
if [ "$installed" != "$version" ]; then
  mkdir -p "$dir"
  echo "check-asyncapi: installing @asyncapi/parser@$version into $dir" >&2
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "@asyncapi/parser@$version" >&2 ||
    { echo "check-asyncapi: npm install failed" >&2; exit 2; }
fi

node - "$dir" "$spec" <<'JS'
const [dir, spec] = process.argv.slice(2);
const path = require("path");
const { Parser, fromFile } = require(path.join(dir, "node_modules", "@asyncapi", "parser"));
const names = ["error", "warning", "info", "hint"];

(async () => {
  const { document, diagnostics } = await fromFile(new Parser(), spec).parse();
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === 0) errors += 1;
    const where = (d.path || []).join(".") || "(document)";
    const line = d.range ? `:${d.range.start.line + 1}` : "";
    console.log(`${names[d.severity] || d.severity} ${d.code} ${spec}${line} ${where}: ${d.message}`);
  }
  if (errors > 0 || !document) {
    console.log(`asyncapi: ${spec} is INVALID (${errors} error(s))`);
    process.exit(1);
  }
  // The parser does not check examples against payloads; do it here.
  const Ajv = require(path.join(dir, "node_modules", "ajv"));
  const addFormats = require(path.join(dir, "node_modules", "ajv-formats"));
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  for (const message of document.allMessages()) {
    const payload = message.payload();
    if (!payload) continue;
    const validate = ajv.compile(payload.json());
    for (const example of message.examples()) {
      if (!validate(example.payload())) {
        errors += 1;
        const why = validate.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; ");
        console.log(`error example-payload ${spec} message ${message.id()} example ${example.name() || "?"}: ${why}`);
      }
    }
  }
  if (errors > 0) {
    console.log(`asyncapi: ${spec} is INVALID (${errors} example(s) do not match their schema)`);
    process.exit(1);
  }
  const ops = document.operations().length;
  const msgs = document.allMessages().length;
  console.log(`asyncapi: ${spec} is valid AsyncAPI ${document.version()} (${ops} operations, ${msgs} messages)`);
})().catch((e) => {
  console.error(`check-asyncapi: ${e.stack || e}`);
  process.exit(1);
});
JS

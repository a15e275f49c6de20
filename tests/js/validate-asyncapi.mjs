// Validate an AsyncAPI document with the official parser (pinned in package.json).
// Usage: node validate-asyncapi.mjs FILE...   (each FILE: one document, JSON)
// Exits 0 when the parser reports no diagnostic of severity error for any FILE; otherwise
// prints each error (file, code, path, message) and exits 1. Other diagnostics are printed,
// not fatal.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const SEVERITY = ["error", "warning", "information", "hint"]; // DiagnosticSeverity values
const ERROR = 0;

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate-asyncapi.mjs FILE...");
  process.exit(2);
}
const parser = new Parser();
let failed = 0;
for (const file of files) {
  const diagnostics = await parser.validate(await readFile(file, "utf8"));
  const describe = (d) => `${file}: ${d.code} at ${(d.path ?? []).join(".") || "(root)"}: ${d.message}`;
  const errors = diagnostics.filter((d) => d.severity === ERROR);
  for (const d of diagnostics.filter((d) => d.severity !== ERROR)) {
    console.log(`${SEVERITY[d.severity] ?? d.severity} ${describe(d)}`);
  }
  for (const d of errors) {
    console.error(`error ${describe(d)}`);
  }
  console.log(`${file}: ${errors.length} error(s), ${diagnostics.length} diagnostic(s)`);
  failed += errors.length;
}
process.exit(failed === 0 ? 0 : 1);

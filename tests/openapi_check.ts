/**
 * A small checker for the subset of OpenAPI 3.0 schemas Pontoon's document
 * uses (type, required, properties, items, enum, nullable, $ref), so tests
 * can hold real API answers against `lib/openapi.json`.
 *
 * @module
 */

// deno-lint-ignore no-explicit-any
type Schema = any;

/** Resolves a local `#/components/...` reference. */
export function resolveRef(doc: Schema, ref: string): Schema {
  if (!ref.startsWith("#/")) throw new Error(`non-local $ref ${ref}`);
  let node = doc;
  for (const part of ref.slice(2).split("/")) {
    node = node?.[part];
    if (node === undefined) throw new Error(`unresolved $ref ${ref}`);
  }
  return node;
}

/** Every `$ref` in the document, for checking that each resolves. */
export function allRefs(node: Schema, out: string[] = []): string[] {
  if (Array.isArray(node)) node.forEach((n) => allRefs(n, out));
  else if (node && typeof node === "object") {
    for (const [k, v] of Object.entries(node)) {
      if (k === "$ref" && typeof v === "string") out.push(v);
      else allRefs(v, out);
    }
  }
  return out;
}

/** Problems of `value` against `schema` (empty when it conforms). */
export function schemaProblems(doc: Schema, schema: Schema, value: unknown, at = "$"): string[] {
  if (schema.$ref) return schemaProblems(doc, resolveRef(doc, schema.$ref), value, at);
  if (value === null) return schema.nullable ? [] : [`${at}: null is not allowed`];
  const problems: string[] = [];
  const type = schema.type;
  const actual = Array.isArray(value) ? "array" : Number.isInteger(value) ? "integer" : typeof value;
  if (type && !(type === actual || (type === "number" && actual === "integer"))) {
    return [`${at}: ${actual}, want ${type}`];
  }
  if (schema.enum && !schema.enum.includes(value)) problems.push(`${at}: ${JSON.stringify(value)} not in enum`);
  if (type === "object" && value && typeof value === "object") {
    const obj = value as Record<string, unknown>;
    for (const key of schema.required ?? []) if (!(key in obj)) problems.push(`${at}: missing ${key}`);
    for (const [key, sub] of Object.entries(schema.properties ?? {})) {
      if (key in obj) problems.push(...schemaProblems(doc, sub, obj[key], `${at}.${key}`));
    }
  }
  if (type === "array" && Array.isArray(value) && schema.items) {
    value.forEach((v, i) => problems.push(...schemaProblems(doc, schema.items, v, `${at}[${i}]`)));
  }
  return problems;
}

#!/usr/bin/env node
// Generate the Postman collection and environment from the OpenAPI document.
// Usage: node scripts/postman.js <openapi.json> <output folder>   (scripts/postman.sh runs it)
//
// openapi-to-postmanv2 converts the document; this script then makes the result runnable as a
// whole (login first, its token kept in a collection variable, logout last), gives every request
// tests derived from the document (status, content type, JSON schema of the body), and drops what
// would differ between two runs (random ids, faked example responses), so a stale committed
// collection shows up as a diff.
"use strict";

const fs = require("fs");
const path = require("path");
const converter = require("openapi-to-postmanv2");

const COLLECTION_FILE = "vram-dashboard.postman_collection.json";
const ENVIRONMENT_FILE = "vram-dashboard.postman_environment.json";
const METHODS = ["get", "put", "post", "delete", "patch"];
const LOGIN = "POST /api/auth/login";
// Run last, in this order: each needs the one before (a download to cancel, nothing running
// to delete), and logout ends the token the others use.
const LAST = [
  // A user made, changed and deleted again; a key made and revoked (its id kept from the answer).
  "POST /api/users",
  "PATCH /api/users/{username}",
  "DELETE /api/users/{username}",
  "POST /api/keys",
  "DELETE /api/keys/{key_id}",
  "POST /api/models/ollama/download",
  "GET /api/models/ollama/downloads",
  "POST /api/models/ollama/download/cancel",
  "POST /api/models/ollama/delete",
  "POST /api/auth/logout",
];
// Statuses a request may get besides its documented success, and why.
const ALSO_EXPECTED = {
  // The download just started may already have finished: then no download runs, a 404.
  "POST /api/models/ollama/download/cancel": [404],
  // The bootstrap administrator's password comes from the environment: 409, nothing changed.
  // (Any other user sets the password it has, which ends its other sessions only.)
  "POST /api/auth/password": [409],
  // The collection's server is a fleet of one; the example node name is not one of its nodes.
  "GET /api/nodes/{node}/{path}": [404],
  "POST /api/nodes/{node}/{path}": [404],
  "PUT /api/nodes/{node}/{path}": [404],
  "PATCH /api/nodes/{node}/{path}": [404],
  "DELETE /api/nodes/{node}/{path}": [404],
};
// Request bodies that use the environment's variables instead of the document's example.
const BODIES = {
  "POST /api/auth/password": { current_password: "{{password}}", new_password: "{{password}}" },
};
// Path variables taken from an earlier answer: operation -> {variable: "{{collection variable}}"}.
const PATH_VARIABLES = {
  "DELETE /api/keys/{key_id}": { key_id: "{{keyId}}" },
};
// Collection variables set from a successful answer: operation -> [variable, field of the body].
const CAPTURE = {
  "POST /api/keys": ["keyId", "id"],
};
// Schema keywords that only document (and that the sandbox's validator may not know).
const ANNOTATIONS = new Set(["examples", "example", "description", "format", "summary", "title"]);

function main() {
  const [documentPath, outDir] = process.argv.slice(2);
  if (!documentPath || !outDir) {
    console.error("usage: node scripts/postman.js <openapi.json> <output folder>");
    process.exit(2);
  }
  const doc = JSON.parse(fs.readFileSync(documentPath, "utf8"));
  // A copy: the converter edits the schemas it is given (it caps arrays at two items for its examples).
  converter.convert({ type: "json", data: structuredClone(doc) },
    { folderStrategy: "Tags", parametersResolution: "Example", schemaFaker: false,
      includeAuthInfoInExample: false, enableOptionalParameters: true },
    (error, result) => {
      if (error || !result.result) {
        console.error("openapi-to-postmanv2 failed:", error || result.reason);
        process.exit(1);
      }
      const collection = shape(result.output[0].data, doc);
      write(path.join(outDir, COLLECTION_FILE), collection);
      write(path.join(outDir, ENVIRONMENT_FILE), environment(doc));
      console.log(`wrote ${path.join(outDir, COLLECTION_FILE)} (${collection.item.length} requests)`);
    });
}

function write(file, data) {
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + "\n");
}

function shape(converted, doc) {
  const operations = new Map();
  for (const [url, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      if (item[method]) operations.set(`${method.toUpperCase()} ${url}`, { url, operation: item[method] });
    }
  }
  const requests = flatten(converted.item).map((item) => {
    const key = operationKey(item.request, operations);
    return { key, item: request(item, key, operations.get(key), doc) };
  });
  const rank = (key) => (key === LOGIN ? -1 : LAST.includes(key) ? LAST.indexOf(key) + 1 : 0);
  requests.sort((a, b) => rank(a.key) - rank(b.key));  // stable: the document's order otherwise
  return {
    info: {
      name: doc.info.title,
      description: "Generated from GET /api/openapi.json by scripts/postman.sh; do not edit by hand. " +
        "Run it as a whole: the login stores the session token in the collection variable `token` " +
        "for the requests after it, and the logout at the end ends it.",
      schema: "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
    },
    auth: { type: "bearer", bearer: [{ key: "token", value: "{{token}}", type: "string" }] },
    variable: [
      { key: "baseUrl", value: "http://127.0.0.1:5000", type: "string" },
      { key: "token", value: "", type: "string" },
      { key: "keyId", value: "", type: "string" },
    ],
    item: requests.map((r) => r.item),
  };
}

function flatten(items) {
  return items.flatMap((item) => (item.item ? flatten(item.item) : [item]));
}

function operationKey(req, operations) {
  // The converter writes {name} path parameters as :name.
  const url = "/" + req.url.path.map((part) => (part.startsWith(":") ? `{${part.slice(1)}}` : part)).join("/");
  for (const candidate of [url, url + "/"]) {
    const key = `${req.method} ${candidate}`;
    if (operations.has(key)) return key;
  }
  throw new Error(`no operation in the document for ${req.method} ${url}`);
}

function request(item, key, { operation }, doc) {
  const req = { ...item.request };
  delete req.name;
  if (operation.security && operation.security.length === 0) {
    req.auth = { type: "noauth" };
  } else {
    delete req.auth;  // inherit the collection's bearer {{token}}
  }
  // The converter leaves "<integer>" placeholders; the document's own examples run as they are.
  const examples = Object.fromEntries((operation.parameters || []).map((p) => [p.name, parameterExample(p)]));
  for (const list of [req.url.query || [], req.url.variable || []]) {
    for (const entry of list) {
      if (examples[entry.key] !== undefined) entry.value = String(examples[entry.key]);
    }
  }
  const body = operation.requestBody && operation.requestBody.content["application/json"];
  for (const entry of req.url.variable || []) {
    const value = (PATH_VARIABLES[key] || {})[entry.key];
    if (value !== undefined) entry.value = value;
  }
  if (key === LOGIN) {
    req.body = raw({ username: "{{username}}", password: "{{password}}" });
  } else if (BODIES[key]) {
    req.body = raw(BODIES[key]);
  } else if (body && body.example !== undefined) {
    req.body = raw(body.example);
  }
  const tests = testScript(key, operation, doc);
  return { name: operation.summary, request: req, event: [{ listen: "test", script: { type: "text/javascript", exec: tests } }] };
}

function parameterExample(parameter) {
  if (parameter.example !== undefined) return parameter.example;
  const schema = parameter.schema || {};
  return schema.examples ? schema.examples[0] : schema.example;
}

function raw(value) {
  return { mode: "raw", raw: JSON.stringify(value, null, 2), options: { raw: { language: "json" } } };
}

function testScript(key, operation, doc) {
  const documented = {};
  for (const [status, response] of Object.entries(operation.responses)) {
    const resolved = resolve(response, doc);
    const types = {};
    for (const [type, media] of Object.entries(resolved.content || {})) {
      types[type] = type === "application/json" && media.schema ? plainSchema(media.schema, doc) : null;
    }
    documented[status] = types;
  }
  const success = Object.keys(operation.responses).filter((s) => /^2\d\d$/.test(s)).map(Number);
  const expected = success.concat(ALSO_EXPECTED[key] || []);
  const lines = [
    `// Generated from the OpenAPI document (${key}).`,
    `const documented = ${JSON.stringify(documented)};`,
    `const expected = ${JSON.stringify(expected)};`,
    `pm.test("status is " + expected.join(" or "), function () {`,
    `  pm.expect(pm.response.code).to.be.oneOf(expected);`,
    `});`,
    `const answer = documented[String(pm.response.code)] || documented["default"];`,
    `pm.test("status is documented", function () {`,
    `  pm.expect(answer, "status " + pm.response.code + " is not in the document").to.be.an("object");`,
    `});`,
    `if (answer) {`,
    `  const type = (pm.response.headers.get("Content-Type") || "").split(";")[0].trim();`,
    `  pm.test("content type is documented", function () {`,
    `    pm.expect(Object.keys(answer)).to.include(type);`,
    `  });`,
    `  if (answer[type]) {`,
    `    pm.test("body matches the schema", function () {`,
    `      pm.response.to.have.jsonSchema(answer[type]);`,
    `    });`,
    `  }`,
    `}`,
  ];
  if (key === LOGIN) {
    lines.push(`if (pm.response.code === 200) {`,
      `  pm.collectionVariables.set("token", pm.response.json().token);  // for every request after this one`,
      `}`);
  }
  if (CAPTURE[key]) {
    const [variable, field] = CAPTURE[key];
    lines.push(`if (pm.response.code >= 200 && pm.response.code < 300) {`,
      `  pm.collectionVariables.set(${JSON.stringify(variable)}, pm.response.json()[${JSON.stringify(field)}]);`,
      `}`);
  }
  return lines;
}

function resolve(node, doc) {
  while (node && node.$ref) {
    node = node.$ref.replace(/^#\//, "").split("/").reduce((at, part) => at[part], doc);
  }
  return node;
}

// The schema with every $ref inlined and the annotation keywords dropped, for the sandbox's validator.
function plainSchema(schema, doc, depth = 0) {
  if (depth > 20) throw new Error("schema nested too deep (a $ref cycle?)");
  if (Array.isArray(schema)) return schema.map((s) => plainSchema(s, doc, depth + 1));
  if (!schema || typeof schema !== "object") return schema;
  if (schema.$ref) return plainSchema(resolve(schema, doc), doc, depth + 1);
  const out = {};
  for (const [name, value] of Object.entries(schema)) {
    if (ANNOTATIONS.has(name)) continue;
    if (name === "properties") {
      out.properties = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plainSchema(v, doc, depth + 1)]));
    } else {
      out[name] = plainSchema(value, doc, depth + 1);
    }
  }
  return out;
}

function environment(doc) {
  return {
    name: `${doc.info.title} (local)`,
    values: [
      { key: "baseUrl", value: "http://127.0.0.1:5000", type: "default", enabled: true },
      { key: "username", value: "admin", type: "default", enabled: true },
      { key: "password", value: "", type: "secret", enabled: true },
    ],
    _postman_variable_scope: "environment",
  };
}

main();

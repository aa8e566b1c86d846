// Run from the repository root: node --test crates/verify/web/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  bytesToHex,
  decodeProof,
  emptyChunk,
  encodeParams,
  hexToBytes,
  hintCount,
  leafHash,
  paramsDigest,
  parseTotals,
  sumsDigest,
  userCommitment,
  verifyProof,
} from "./verify.js";

const vectors = JSON.parse(readFileSync(new URL("../testdata/vectors.json", import.meta.url), "utf8"));
const firstValid = vectors.cases.find((c) => c.expect === "valid");

test("the vectors are loaded and cover both outcomes", () => {
  assert.ok(vectors.cases.length >= 10);
  assert.ok(vectors.cases.some((c) => c.expect === "valid"));
  assert.ok(vectors.cases.some((c) => c.expect === "invalid"));
  for (const c of vectors.cases) assert.match(c.expect, /^(valid|invalid)$/, c.name);
});

for (const c of vectors.cases) {
  test(`vector: ${c.name} -> ${c.expect} (${c.why})`, async () => {
    const r = await verifyProof(hexToBytes(c.proof), c.root, c.totals ?? undefined);
    assert.equal(r.ok ? "valid" : "invalid", c.expect, r.ok ? "unexpectedly valid" : r.error);
    if (r.ok) {
      assert.equal(r.root, c.root);
      assert.equal(r.totalsChecked, c.totals != null);
      assert.ok(r.userId.length > 0);
    } else {
      assert.equal(typeof r.error, "string");
      assert.ok(r.error.length > 0);
    }
  });
}

test("a valid proof also verifies as hex text and without totals", async () => {
  const r = await verifyProof(firstValid.proof, firstValid.root.toUpperCase());
  assert.equal(r.ok, true, r.error);
  assert.equal(r.totalsChecked, false);
  assert.equal(r.exchange, vectors.tree.params.exchange);
  assert.equal(r.snapshot, vectors.tree.params.snapshot);
});

test("intermediate values match", async () => {
  const iv = vectors.intermediate;
  const P = await paramsDigest(vectors.tree.params);
  assert.equal(bytesToHex(P), vectors.tree.params_digest);

  const U = await userCommitment(P, iv.user_id, hexToBytes(iv.salt));
  assert.equal(bytesToHex(U), iv.user_commitment);
  const leaf = await leafHash(P, iv.position, U);
  assert.equal(bytesToHex(leaf), iv.leaf_hash);
  assert.equal(bytesToHex(await emptyChunk()), iv.empty_chunk);

  // the first honest case is this user's proof: its balances give the leaf's sums digest
  const proof = decodeProof(hexToBytes(firstValid.proof));
  assert.equal(proof.userId, iv.user_id);
  assert.equal(bytesToHex(proof.salt), iv.salt);
  assert.equal(proof.position, BigInt(iv.position));
  assert.deepEqual(proof.paramsBytes, encodeParams(vectors.tree.params));
  const k = vectors.tree.params.assets.length;
  assert.equal(k, 20);
  const sums = new Array(k).fill(0n);
  for (const b of proof.balances) sums[b.index] = b.amount;
  assert.equal(bytesToHex(await sumsDigest(sums)), iv.leaf_sums_digest);
});

test("the published totals of the tree match every honest proof's revealed totals", async () => {
  const totals = vectors.tree.totals;
  for (const c of vectors.cases.filter((c) => c.expect === "valid" && c.root === vectors.tree.root)) {
    const r = await verifyProof(c.proof, vectors.tree.root, totals);
    assert.equal(r.ok, true, `${c.name}: ${r.error}`);
    for (const t of r.totals) assert.equal(t.total, BigInt(totals[t.index]), `${c.name}: ${t.asset}`);
  }
});

test("flipping any single byte of a valid proof never verifies", async () => {
  const bytes = hexToBytes(firstValid.proof);
  assert.equal((await verifyProof(bytes, firstValid.root, firstValid.totals)).ok, true);
  const failures = [];
  for (let i = 0; i < bytes.length; i++) {
    const mutated = bytes.slice();
    mutated[i] ^= 0x01;
    // without totals (the weaker check) and with them
    const a = await verifyProof(mutated, firstValid.root);
    const b = await verifyProof(mutated, firstValid.root, firstValid.totals);
    if (a.ok || b.ok) failures.push(i);
    assert.equal(typeof a.error, "string");
  }
  assert.deepEqual(failures, [], `byte flips that still verified: ${failures.join(", ")}`);
  // the original is untouched and still valid
  assert.equal((await verifyProof(bytes, firstValid.root)).ok, true);
});

test("a wrong root, wrong totals or wrong totals count is refused (the tests can fail)", async () => {
  const bytes = hexToBytes(firstValid.proof);
  const root = hexToBytes(firstValid.root);
  root[31] ^= 0x80;
  const r1 = await verifyProof(bytes, bytesToHex(root));
  assert.equal(r1.ok, false);
  assert.match(r1.error, /published root/);

  const totals = firstValid.totals.slice();
  totals[totals.length - 1] = (BigInt(totals[totals.length - 1]) + 1n).toString();
  const r2 = await verifyProof(bytes, firstValid.root, totals);
  assert.equal(r2.ok, false);
  assert.match(r2.error, /totals/);

  const r3 = await verifyProof(bytes, firstValid.root, firstValid.totals.slice(1));
  assert.equal(r3.ok, false);
  assert.match(r3.error, /expected 20 totals/);

  const r4 = await verifyProof(bytes, firstValid.root.slice(2));
  assert.equal(r4.ok, false);
  assert.match(r4.error, /32 bytes/);

  const r5 = await verifyProof(bytes, firstValid.root, firstValid.totals.map((t, i) => (i === 0 ? "-1" : t)));
  assert.equal(r5.ok, false);
  assert.match(r5.error, /decimal/);
});

test("malformed inputs are refused with a message", async () => {
  const valid = hexToBytes(firstValid.proof);
  const bad = [
    ["empty", new Uint8Array(0), /truncated/],
    ["short", Uint8Array.of(0x52, 0x50), /truncated/],
    ["bad magic", Uint8Array.from([0x52, 0x50, 0x4f, 0x4c, ...valid.slice(4)]), /magic/],
    ["bad version", Uint8Array.from([...valid.slice(0, 4), 2, ...valid.slice(5)]), /version/],
    ["bad form", Uint8Array.from([...valid.slice(0, 5), 1, ...valid.slice(6)]), /form/],
    ["header only", valid.slice(0, 6), /truncated/],
    ["cut in the last hash", valid.slice(0, valid.length - 1), /truncated/],
    ["trailing byte", Uint8Array.from([...valid, 0]), /trailing/],
  ];
  for (const [name, bytes, re] of bad) {
    assert.throws(() => decodeProof(bytes), re, name);
    const r = await verifyProof(bytes, firstValid.root);
    assert.equal(r.ok, false, name);
    assert.match(r.error, re, name);
  }
  assert.throws(() => hexToBytes("abc"), /odd/);
  assert.throws(() => hexToBytes("zz"), /non-hex/);
  const r = await verifyProof("not hex", firstValid.root);
  assert.equal(r.ok, false);
});

// Build a small proof by hand to exercise the decoder's rules one at a time.
function u128(v) {
  const out = new Uint8Array(16);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, v >> 64n);
  dv.setBigUint64(8, v & 0xffffffffffffffffn);
  return [...out];
}
function buildProof({ height = 1, assets = [["A", 10n]], id = "u", position = 0n, balances = [], revealed = [], hints, siblingSums = [] } = {}) {
  const enc = new TextEncoder();
  const b = [0x52, 0x50, 0x4f, 0x52, 1, 0];
  b.push(1, ...enc.encode("X"), 1, ...enc.encode("S"), height, assets.length >> 8, assets.length & 0xff);
  for (const [code, max] of assets) b.push(code.length, ...enc.encode(code), ...u128(max));
  const idb = enc.encode(id);
  b.push(idb.length >> 8, idb.length & 0xff, ...idb, ...new Array(32).fill(7));
  const pos = new Uint8Array(8);
  new DataView(pos.buffer).setBigUint64(0, position);
  b.push(...pos, balances.length >> 8, balances.length & 0xff);
  for (const [i, amt] of balances) b.push(i >> 8, i & 0xff, ...u128(amt));
  b.push(revealed.length, ...revealed);
  const k = assets.length;
  let nSums = 0;
  for (const c of revealed) nSums += Math.min(16, k - 16 * c);
  const m = Math.ceil(k / 16);
  let M = 1;
  while (M < m) M *= 2;
  const nh = hints ?? hintCount(revealed, M);
  for (let l = 0; l < height; l++) {
    b.push(...new Array(32).fill(1));
    for (let i = 0; i < nSums; i++) b.push(...u128(siblingSums[l] ?? 0n));
    b.push(...new Array(64 * nh).fill(2));
  }
  return Uint8Array.from(b);
}

test("hint counts follow §3.4", () => {
  assert.equal(hintCount([], 1), 1);
  assert.equal(hintCount([0], 1), 0);
  assert.equal(hintCount([0], 2), 1);
  assert.equal(hintCount([0, 1], 2), 0);
  assert.equal(hintCount([], 4), 1);
  assert.equal(hintCount([0], 4), 2);
  assert.equal(hintCount([1, 2], 4), 2);
  assert.equal(hintCount([5], 32), 5);
});

test("decoder rules of §2 and §4", () => {
  // the builder itself produces decodable proofs
  decodeProof(buildProof());
  decodeProof(buildProof({ balances: [[0, 10n]], revealed: [0] }));
  decodeProof(buildProof({ height: 40, assets: [["A", (2n ** 128n - 1n) >> 40n]] }));
  const k40 = Array.from({ length: 40 }, (_, i) => [`C${i}`, 5n]);
  decodeProof(buildProof({ assets: k40, balances: [[3, 1n], [39, 5n]], revealed: [0, 2] }));

  const cases = [
    [{ height: 0 }, /height/],
    [{ height: 41 }, /height/],
    [{ assets: [] }, /asset count/],
    [{ assets: [["", 1n]] }, /code length/],
    [{ assets: [["A".repeat(17), 1n]] }, /code length/],
    [{ assets: [["A B", 1n]] }, /character/],
    [{ assets: [["A", 1n], ["A", 1n]] }, /unique/],
    [{ assets: [["A", 0n]] }, /maximum/],
    [{ height: 1, assets: [["A", 2n ** 127n]] }, /exceeds/],
    [{ id: "" }, /user id length/],
    [{ id: "x".repeat(256) }, /user id length/],
    [{ position: 2n }, /position/],
    [{ balances: [[0, 0n]], revealed: [0] }, /zero/],
    [{ balances: [[0, 11n]], revealed: [0] }, /exceeds its maximum/],
    [{ balances: [[1, 1n]], revealed: [0] }, /asset index/],
    [{ assets: [["A", 5n], ["B", 5n]], balances: [[1, 1n], [0, 1n]], revealed: [0] }, /strictly increasing/],
    [{ assets: [["A", 5n], ["B", 5n]], balances: [[0, 1n], [0, 1n]], revealed: [0] }, /strictly increasing/],
    [{ balances: [[0, 1n]], revealed: [] }, /not revealed/],
    [{ revealed: [1] }, /revealed chunk count|chunk count/],
    [{ assets: k40, revealed: [1, 0] }, /strictly increasing/],
    [{ assets: k40, revealed: [3] }, /not below the chunk count/],
    [{ assets: k40, balances: [[20, 1n]], revealed: [0] }, /not revealed/],
    [{ revealed: [0], hints: 1 }, /trailing/],
    [{ revealed: [], hints: 0 }, /truncated/],
  ];
  for (const [opts, re] of cases) {
    assert.throws(() => decodeProof(buildProof(opts)), re, JSON.stringify(opts, (_, v) => (typeof v === "bigint" ? `${v}` : v)));
  }
});

test("totals parsing", () => {
  assert.deepEqual(parseTotals(""), []);
  assert.deepEqual(parseTotals("1\n 2\r\n340282366920938463463374607431768211455\n"), ["1", "2", "340282366920938463463374607431768211455"]);
  assert.deepEqual(parseTotals('["1", 2, "79228162614264337593543950343"]'), ["1", "2", "79228162614264337593543950343"]);
  assert.deepEqual(parseTotals(JSON.stringify(vectors.tree.totals)), vectors.tree.totals);
  assert.throws(() => parseTotals("1\n-2"), /line 2/);
  assert.throws(() => parseTotals("[1, 2.5]"), /item 2/);
});

test("the sibling sum bound is max * 2^level, inclusive", async () => {
  const root = "00".repeat(32);
  const run = (height, max, siblingSums) =>
    verifyProof(buildProof({ height, assets: [["A", max]], revealed: [0], siblingSums }), root);
  const check = async (height, max, sums, re) => {
    const r = await run(height, max, sums);
    assert.equal(r.ok, false);
    assert.match(r.error, re, `${height} ${max} ${sums}`);
  };
  // at the bound: passes the bound check, fails only at the (made-up) root
  await check(3, 10n, [10n, 20n, 40n], /published root/);
  // one above the bound at each level
  await check(3, 10n, [11n, 0n, 0n], /level 0: .* exceeds max \* 2\^0 = 10$/);
  await check(3, 10n, [0n, 21n, 0n], /level 1: .* exceeds max \* 2\^1 = 20$/);
  await check(3, 10n, [0n, 0n, 41n], /level 2: .* exceeds max \* 2\^2 = 40$/);
  // the largest maximum: the top sibling may hold 2^(h-1) * max, and no sum overflows
  const big = (2n ** 128n - 1n) >> 2n;
  await check(2, big, [big, 2n * big], /published root/);
  await check(2, big, [big, 2n * big + 1n], /level 1: .* exceeds/);
});

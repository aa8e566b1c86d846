// Independent verifier for Rampart proof-of-reserves inclusion proofs
// (docs/reserves-spec.md, version 1, form 0). No dependencies: WebCrypto
// SHA-256 (globalThis.crypto.subtle) and BigInt for every 128-bit amount.
// Runs unchanged in a modern browser and in Node.js >= 20.

const MAGIC = [0x52, 0x50, 0x4f, 0x52]; // "RPOR"
const VERSION = 1;
const FORM = 0;
const DOMAIN = "rampart-por-v1";
const U128_LIMIT = 1n << 128n; // sums must stay strictly below this
const U128_MAX = U128_LIMIT - 1n;
const CHUNK = 16;
const CODE_RE = /^[A-Za-z0-9._-]{1,16}$/;

const TAG_LEAF = 0x00;
const TAG_INNER = 0x01;
const TAG_CHUNK = 0x03;
const TAG_CHUNK_NODE = 0x04;
const TAG_ROOT = 0x05;
const TAG_PARAMS = 0x06;
const TAG_USER = 0x07;

const utf8Strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Lossy = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const utf8Encoder = new TextEncoder();

// ---------------------------------------------------------------- bytes

/** Lower-case hex of a Uint8Array. */
export function bytesToHex(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += bytes[i].toString(16).padStart(2, "0");
  return s;
}

/** Parse hex (whitespace ignored, optional 0x prefix); throws on anything else. */
export function hexToBytes(hex) {
  if (typeof hex !== "string") throw new Error("hex input must be a string");
  let s = hex.replace(/\s+/g, "");
  if (s.startsWith("0x") || s.startsWith("0X")) s = s.slice(2);
  if (s.length % 2 !== 0) throw new Error(`hex input has an odd number of digits (${s.length})`);
  const bad = s.search(/[^0-9a-fA-F]/);
  if (bad !== -1) throw new Error(`hex input has a non-hex character at position ${bad}`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

function toBytes(input, what) {
  if (input instanceof Uint8Array) return input;
  if (input instanceof ArrayBuffer) return new Uint8Array(input);
  if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  if (typeof input === "string") return hexToBytes(input);
  throw new Error(`${what} must be bytes (Uint8Array) or a hex string`);
}

function concat(parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u8(v) {
  return Uint8Array.of(v);
}

function u16be(v) {
  return Uint8Array.of((v >> 8) & 0xff, v & 0xff);
}

function u64be(v) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(v));
  return out;
}

function u128be(v) {
  const out = new Uint8Array(16);
  const dv = new DataView(out.buffer);
  dv.setBigUint64(0, v >> 64n);
  dv.setBigUint64(8, v & 0xffffffffffffffffn);
  return out;
}

function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

// ---------------------------------------------------------------- hashing

/** SHA-256 over the concatenation of the given byte arrays (async). */
export async function sha256(...parts) {
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle) {
    throw new Error(
      "WebCrypto (crypto.subtle) is unavailable: open the page from https://, http://localhost or a file:// URL",
    );
  }
  return new Uint8Array(await subtle.digest("SHA-256", concat(parts)));
}

// ---------------------------------------------------------------- reader

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.o = 0;
  }
  need(n, what) {
    if (this.o + n > this.b.length) {
      throw new Error(
        `truncated input: ${what} needs ${n} byte(s) at offset ${this.o}, only ${this.b.length - this.o} left`,
      );
    }
  }
  u8(what) {
    this.need(1, what);
    return this.b[this.o++];
  }
  u16(what) {
    this.need(2, what);
    const v = this.dv.getUint16(this.o);
    this.o += 2;
    return v;
  }
  u64(what) {
    this.need(8, what);
    const v = this.dv.getBigUint64(this.o);
    this.o += 8;
    return v;
  }
  u128(what) {
    this.need(16, what);
    const v = (this.dv.getBigUint64(this.o) << 64n) | this.dv.getBigUint64(this.o + 8);
    this.o += 16;
    return v;
  }
  bytes(n, what) {
    this.need(n, what);
    const v = this.b.slice(this.o, this.o + n);
    this.o += n;
    return v;
  }
}

// ---------------------------------------------------------------- parameters (§2)

function decodeName(r, what) {
  const len = r.u8(`${what} length`);
  if (len < 1) throw new Error(`${what} is empty (length must be 1-255)`);
  const raw = r.bytes(len, what);
  try {
    return utf8Strict.decode(raw);
  } catch {
    throw new Error(`${what} is not valid UTF-8`);
  }
}

/** Decode §2 params from a reader; returns {exchange, snapshot, height, assets:[{code,max}]}. */
function readParams(r) {
  const exchange = decodeName(r, "exchange name");
  const snapshot = decodeName(r, "snapshot name");
  const height = r.u8("height");
  if (height < 1 || height > 40) throw new Error(`height ${height} is out of range (1-40)`);
  const k = r.u16("asset count");
  if (k < 1 || k > 500) throw new Error(`asset count ${k} is out of range (1-500)`);
  const maxAllowed = U128_MAX >> BigInt(height);
  const seen = new Set();
  const assets = [];
  for (let a = 0; a < k; a++) {
    const len = r.u8(`asset ${a} code length`);
    if (len < 1 || len > 16) throw new Error(`asset ${a}: code length ${len} is out of range (1-16)`);
    const raw = r.bytes(len, `asset ${a} code`);
    const code = String.fromCharCode(...raw);
    if (!CODE_RE.test(code)) throw new Error(`asset ${a}: code has a character outside [A-Za-z0-9._-]`);
    if (seen.has(code)) throw new Error(`asset ${a}: code ${code} is not unique`);
    seen.add(code);
    const max = r.u128(`asset ${a} maximum`);
    if (max < 1n) throw new Error(`asset ${code}: maximum is 0 (must be at least 1)`);
    if (max > maxAllowed) {
      throw new Error(`asset ${code}: maximum ${max} exceeds (2^128 - 1) >> ${height} = ${maxAllowed}`);
    }
    assets.push({ code, max });
  }
  return { exchange, snapshot, height, assets };
}

/**
 * Encode params ({exchange, snapshot, height, assets:[{code, max}]}, max as BigInt,
 * number or decimal string) to the §2 byte encoding, checking every rule.
 */
export function encodeParams(params) {
  const ex = utf8Encoder.encode(String(params.exchange));
  const sn = utf8Encoder.encode(String(params.snapshot));
  if (ex.length < 1 || ex.length > 255) throw new Error("exchange name must be 1-255 bytes");
  if (sn.length < 1 || sn.length > 255) throw new Error("snapshot name must be 1-255 bytes");
  if (!Number.isInteger(params.height) || params.height < 0 || params.height > 255) {
    throw new Error("height must be an integer 1-40");
  }
  if (!Array.isArray(params.assets) || params.assets.length > 0xffff) throw new Error("assets must be an array of 1-500");
  const parts = [u8(ex.length), ex, u8(sn.length), sn, u8(params.height), u16be(params.assets.length)];
  for (const a of params.assets) {
    const code = utf8Encoder.encode(String(a.code));
    if (code.length > 255) throw new Error("asset code too long");
    const max = toU128(a.max, `maximum of ${a.code}`);
    parts.push(u8(code.length), code, u128be(max));
  }
  const bytes = concat(parts);
  const r = new Reader(bytes);
  readParams(r); // applies every §2 rule
  return bytes;
}

/** P = SHA-256(0x06 ‖ "rampart-por-v1" ‖ params); params as encoded bytes or as an object. */
export async function paramsDigest(params) {
  const bytes = params instanceof Uint8Array ? params : encodeParams(params);
  return sha256(u8(TAG_PARAMS), utf8Encoder.encode(DOMAIN), bytes);
}

/** U = H(0x07 ‖ P ‖ len:u16 ‖ user_id ‖ salt). userId as bytes or a string (UTF-8). */
export async function userCommitment(P, userId, salt) {
  const id = typeof userId === "string" ? utf8Encoder.encode(userId) : userId;
  return sha256(u8(TAG_USER), P, u16be(id.length), id, salt);
}

/** Leaf hash H(0x00 ‖ P ‖ position:u64 ‖ U). */
export async function leafHash(P, position, U) {
  return sha256(u8(TAG_LEAF), P, u64be(position), U);
}

/** E = H(0x03), the digest of an empty chunk slot. */
export async function emptyChunk() {
  return sha256(u8(TAG_CHUNK));
}

// ---------------------------------------------------------------- chunks (§3.2-3.4)

function chunkCount(k) {
  return Math.ceil(k / CHUNK);
}

function slotCount(m) {
  let M = 1;
  while (M < m) M *= 2;
  return M;
}

function chunkSize(k, c) {
  return Math.min(CHUNK, k - c * CHUNK);
}

async function chunkDigest(sums) {
  const parts = [u8(TAG_CHUNK)];
  for (const s of sums) parts.push(u128be(s));
  return sha256(...parts);
}

/** Full sums digest D (§3.3) of a complete vector of K sums (BigInt). */
export async function sumsDigest(sums) {
  const k = sums.length;
  const m = chunkCount(k);
  const digests = [];
  for (let c = 0; c < m; c++) digests.push(await chunkDigest(sums.slice(c * CHUNK, c * CHUNK + chunkSize(k, c))));
  if (m === 1) return digests[0];
  const M = slotCount(m);
  if (M > m) {
    const e = await emptyChunk();
    while (digests.length < M) digests.push(e);
  }
  let level = digests;
  while (level.length > 1) {
    const next = [];
    for (let i = 0; i < level.length; i += 2) next.push(await sha256(u8(TAG_CHUNK_NODE), level[i], level[i + 1]));
    level = next;
  }
  return level[0];
}

function anyInRange(revealed, lo, hi) {
  for (const c of revealed) if (c >= lo && c < hi) return true;
  return false;
}

/** Number of hints a node needs for revealed chunk set S (sorted array) and M slots (§3.4). */
export function hintCount(revealed, M) {
  const walk = (lo, hi) => {
    if (!anyInRange(revealed, lo, hi)) return 1;
    if (hi - lo === 1) return 0;
    const mid = (lo + hi) / 2;
    return walk(lo, mid) + walk(mid, hi);
  };
  return walk(0, M);
}

/**
 * D of a node from the sums of the revealed chunks and its hints (§3.4).
 * chunkSums(c) returns the BigInt sums of revealed chunk c.
 */
async function partialDigest(revealed, M, chunkSums, hints) {
  let next = 0;
  const walk = async (lo, hi) => {
    if (!anyInRange(revealed, lo, hi)) {
      if (next >= hints.length) throw new Error("internal error: too few hints");
      return hints[next++];
    }
    if (hi - lo === 1) return chunkDigest(chunkSums(lo));
    const mid = (lo + hi) / 2;
    const left = await walk(lo, mid);
    const right = await walk(mid, hi);
    return sha256(u8(TAG_CHUNK_NODE), left, right);
  };
  const d = await walk(0, M);
  if (next !== hints.length) throw new Error("internal error: unused hints");
  return d;
}

// ---------------------------------------------------------------- proof decoding (§4)

/**
 * Decode an inclusion proof (Uint8Array, or hex string) and check every rule of
 * the §4 table. Throws an Error with a clear message on any malformed input.
 */
export function decodeProof(input) {
  const bytes = toBytes(input, "proof");
  const r = new Reader(bytes);
  r.need(4, "magic");
  for (let i = 0; i < 4; i++) {
    if (bytes[i] !== MAGIC[i]) throw new Error('not a proof: bad magic (expected "RPOR")');
  }
  r.o = 4;
  const version = r.u8("version");
  if (version !== VERSION) throw new Error(`unsupported version ${version} (expected ${VERSION})`);
  const form = r.u8("form");
  if (form !== FORM) throw new Error(`unsupported proof form ${form} (expected ${FORM})`);

  const paramsStart = r.o;
  const params = readParams(r);
  const paramsBytes = bytes.slice(paramsStart, r.o);
  const k = params.assets.length;
  const h = params.height;
  const m = chunkCount(k);
  const M = slotCount(m);

  const idLen = r.u16("user id length");
  if (idLen < 1 || idLen > 255) throw new Error(`user id length ${idLen} is out of range (1-255)`);
  const userIdBytes = r.bytes(idLen, "user id");
  const salt = r.bytes(32, "salt");
  const position = r.u64("position");
  if (position >= 1n << BigInt(h)) throw new Error(`position ${position} is not below 2^${h}`);

  const n = r.u16("balance count");
  if (n > k) throw new Error(`balance count ${n} exceeds the asset count ${k}`);
  const balances = [];
  let prev = -1;
  for (let i = 0; i < n; i++) {
    const index = r.u16(`balance ${i} asset index`);
    if (index >= k) throw new Error(`balance ${i}: asset index ${index} is not below the asset count ${k}`);
    if (index <= prev) throw new Error(`balance ${i}: asset indices are not strictly increasing`);
    prev = index;
    const amount = r.u128(`balance ${i} amount`);
    const asset = params.assets[index];
    if (amount === 0n) throw new Error(`balance of ${asset.code} is zero (zero balances must be omitted)`);
    if (amount > asset.max) throw new Error(`balance of ${asset.code} (${amount}) exceeds its maximum ${asset.max}`);
    balances.push({ index, code: asset.code, amount });
  }

  const s = r.u8("revealed chunk count");
  if (s > m) throw new Error(`revealed chunk count ${s} exceeds the chunk count ${m}`);
  const revealed = [];
  prev = -1;
  for (let i = 0; i < s; i++) {
    const c = r.u8(`revealed chunk ${i}`);
    if (c >= m) throw new Error(`revealed chunk ${c} is not below the chunk count ${m}`);
    if (c <= prev) throw new Error("revealed chunk indices are not strictly increasing");
    prev = c;
    revealed.push(c);
  }
  for (const b of balances) {
    const c = Math.floor(b.index / CHUNK);
    if (!revealed.includes(c)) throw new Error(`the chunk ${c} of balance ${b.code} is not revealed`);
  }

  // assets of the revealed chunks, chunk by chunk, in increasing order
  const revealedAssets = [];
  for (const c of revealed) for (let a = c * CHUNK; a < c * CHUNK + chunkSize(k, c); a++) revealedAssets.push(a);
  const hints = hintCount(revealed, M);

  const levels = [];
  for (let l = 0; l < h; l++) {
    const siblingHash = r.bytes(32, `level ${l} sibling hash`);
    const siblingSums = [];
    for (const a of revealedAssets) siblingSums.push(r.u128(`level ${l} sibling sum of ${params.assets[a].code}`));
    const siblingHints = [];
    for (let i = 0; i < hints; i++) siblingHints.push(r.bytes(32, `level ${l} sibling hint ${i}`));
    const parentHints = [];
    for (let i = 0; i < hints; i++) parentHints.push(r.bytes(32, `level ${l} parent hint ${i}`));
    levels.push({ siblingHash, siblingSums, siblingHints, parentHints });
  }
  if (r.o !== bytes.length) {
    throw new Error(`${bytes.length - r.o} trailing byte(s) after the last level (offset ${r.o})`);
  }

  return {
    version,
    form,
    params,
    paramsBytes,
    userIdBytes,
    userId: utf8Lossy.decode(userIdBytes),
    userIdIsUtf8: isUtf8(userIdBytes),
    salt,
    position,
    balances,
    revealed,
    revealedAssets,
    levels,
  };
}

function isUtf8(b) {
  try {
    utf8Strict.decode(b);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- verification (§4.1)

function toU128(v, what) {
  let x;
  if (typeof v === "bigint") x = v;
  else if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw new Error(`${what} is not a safe integer; give it as a decimal string`);
    x = BigInt(v);
  } else if (typeof v === "string") {
    const t = v.trim();
    if (!/^[0-9]+$/.test(t)) throw new Error(`${what} is not a decimal integer: ${JSON.stringify(v.slice(0, 60))}`);
    x = BigInt(t);
  } else throw new Error(`${what} must be a BigInt or a decimal string`);
  if (x < 0n || x > U128_MAX) throw new Error(`${what} is out of the u128 range`);
  return x;
}

/**
 * Parse published totals from text: a JSON array (of decimal strings or integers,
 * parsed without loss of precision) or one decimal per line (commas/spaces also separate).
 * Returns an array of decimal strings; an empty array for blank input.
 */
export function parseTotals(text) {
  let t = String(text).trim();
  if (t === "") return [];
  if (t.startsWith("[")) {
    if (!t.endsWith("]")) throw new Error("totals: JSON array is not closed");
    t = t.slice(1, -1).trim();
    if (t === "") return [];
    return t.split(",").map((item, i) => {
      let s = item.trim();
      if (s.length >= 2 && s.startsWith('"') && s.endsWith('"')) s = s.slice(1, -1).trim();
      if (!/^[0-9]+$/.test(s)) throw new Error(`totals: item ${i + 1} is not a non-negative integer`);
      return s;
    });
  }
  return t.split(/[\s,]+/).map((s, i) => {
    if (!/^[0-9]+$/.test(s)) throw new Error(`totals: line ${i + 1} is not a non-negative integer`);
    return s;
  });
}

function parseRoot(rootHex) {
  const root = toBytes(rootHex, "root");
  if (root.length !== 32) throw new Error(`the published root must be 32 bytes (64 hex digits), got ${root.length}`);
  return root;
}

async function verifyDecoded(proof, rootStar, totals) {
  const { params, revealed, revealedAssets, levels } = proof;
  const k = params.assets.length;
  const h = params.height;
  const M = slotCount(chunkCount(k));

  // chunk c of revealed -> slice of a revealed-assets-ordered array
  const offsets = new Map();
  {
    let o = 0;
    for (const c of revealed) {
      offsets.set(c, o);
      o += chunkSize(k, c);
    }
  }
  const sliceOf = (arr) => (c) => arr.slice(offsets.get(c), offsets.get(c) + chunkSize(k, c));

  // 1. P, U, leaf hash, leaf sums and their full D
  const P = await paramsDigest(proof.paramsBytes);
  const U = await userCommitment(P, proof.userIdBytes, proof.salt);
  let hash = await leafHash(P, proof.position, U);
  const leafSums = new Array(k).fill(0n);
  for (const b of proof.balances) leafSums[b.index] = b.amount;
  let D = await sumsDigest(leafSums);
  const sums = revealedAssets.map((a) => leafSums[a]);

  // 2. the levels
  for (let l = 0; l < h; l++) {
    const lvl = levels[l];
    for (let i = 0; i < revealedAssets.length; i++) {
      const asset = params.assets[revealedAssets[i]];
      const bound = asset.max << BigInt(l);
      if (lvl.siblingSums[i] > bound) {
        throw new Error(
          `level ${l}: the sibling's sum of ${asset.code} (${lvl.siblingSums[i]}) exceeds max * 2^${l} = ${bound}`,
        );
      }
    }
    const siblingD = await partialDigest(revealed, M, sliceOf(lvl.siblingSums), lvl.siblingHints);
    const right = ((proof.position >> BigInt(l)) & 1n) === 1n;
    hash = right
      ? await sha256(u8(TAG_INNER), lvl.siblingHash, siblingD, hash, D)
      : await sha256(u8(TAG_INNER), hash, D, lvl.siblingHash, siblingD);
    for (let i = 0; i < sums.length; i++) {
      const v = sums[i] + lvl.siblingSums[i];
      if (v >= U128_LIMIT) {
        throw new Error(`level ${l}: the sum of ${params.assets[revealedAssets[i]].code} overflows 128 bits`);
      }
      sums[i] = v;
    }
    D = await partialDigest(revealed, M, sliceOf(sums), lvl.parentHints);
  }

  // 3. the root
  const R = await sha256(u8(TAG_ROOT), P, hash, D);
  if (!bytesEqual(R, rootStar)) {
    throw new Error(
      `the proof does not lead to the published root (computed ${bytesToHex(R)}, published ${bytesToHex(rootStar)})`,
    );
  }

  // 4. the published totals
  let totalsChecked = false;
  if (totals !== undefined && totals !== null) {
    if (!Array.isArray(totals)) throw new Error("the totals must be an array");
    if (totals.length !== k) throw new Error(`expected ${k} totals (one per asset, in tree order), got ${totals.length}`);
    const t = totals.map((v, i) => toU128(v, `total of ${params.assets[i].code}`));
    const td = await sumsDigest(t);
    if (!bytesEqual(td, D)) throw new Error("the published totals do not hash to the top node's sums digest");
    for (let i = 0; i < revealedAssets.length; i++) {
      const a = revealedAssets[i];
      if (t[a] !== sums[i]) {
        throw new Error(`the published total of ${params.assets[a].code} (${t[a]}) differs from the proof's (${sums[i]})`);
      }
    }
    totalsChecked = true;
  }

  return {
    ok: true,
    root: bytesToHex(R),
    exchange: params.exchange,
    snapshot: params.snapshot,
    userId: proof.userId,
    userIdHex: bytesToHex(proof.userIdBytes),
    position: proof.position,
    paramsDigest: bytesToHex(P),
    balances: proof.balances.map((b) => ({ asset: b.code, index: b.index, amount: b.amount })),
    totals: revealedAssets.map((a, i) => ({ asset: params.assets[a].code, index: a, total: sums[i] })),
    totalsChecked,
  };
}

/**
 * Verify a proof (Uint8Array or hex) against the published root (hex) and,
 * optionally, the published totals (array of BigInt or decimal strings, all K
 * assets in tree order). Never throws: returns {ok:true, ...} or {ok:false, error}.
 */
export async function verifyProof(bytes, rootHex, totals) {
  try {
    const rootStar = parseRoot(rootHex);
    const proof = decodeProof(bytes);
    return await verifyDecoded(proof, rootStar, totals);
  } catch (e) {
    return { ok: false, error: e && e.message ? e.message : String(e) };
  }
}

// The TypeScript validation peers of scripts/bench_validate.py, on Node 22.
//
//   node validate.mjs --gen DIR --corpus DIR --record FILE [--cases FILE]
//                     [--n N] [--warmup N]
//
// --gen is the output of `lex build --import-ext .ts` on the corpus (Node 22 strips
// the types); --corpus the Lexicon JSON files @atproto/lexicon's `Lexicons` loads;
// --record the JSON text of one app.bsky.feed.post. Each peer validates that text
// from the string, every time, exactly as a server receiving it would:
//
//   lex_validate:   post.$validate(jsonToLex(JSON.parse(text)))          (@atproto/lex)
//   lexicon_assert: lexicons.assertValidRecord(NSID,
//                     jsonToLex(JSON.parse(text)))                    (@atproto/lexicon)
//
// (@atproto/lexicon's blob check wants a BlobRef, which its own `jsonToLex` makes from
// the JSON blob shape; a bare JSON.parse object is rejected as "should be a blob ref".)
//
// Prints one JSON object on stdout: {"node", "versions", "checks", "rates"}. With
// --cases FILE (a JSON object name -> record), "checks" gives, for each case and
// peer, whether it was accepted and the first line of the error; "rates" gives each
// peer's records/s over --n records after --warmup untimed ones (0 = no timing).
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

import { jsonToLex as lexJsonToLex } from '@atproto/lex'
import { Lexicons, jsonToLex as lexiconJsonToLex } from '@atproto/lexicon'

const NSID = 'app.bsky.feed.post'

const { values: args } = parseArgs({
  options: {
    gen: { type: 'string' },
    corpus: { type: 'string' },
    record: { type: 'string' },
    cases: { type: 'string' },
    n: { type: 'string', default: '20000' },
    warmup: { type: 'string', default: '5000' },
  },
})
for (const k of ['gen', 'corpus', 'record']) {
  if (!args[k]) throw new Error(`--${k} is required`)
}

function lexiconFiles(dir, out = []) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name)
    if (statSync(p).isDirectory()) lexiconFiles(p, out)
    else if (name.endsWith('.json')) out.push(p)
  }
  return out
}

const docs = lexiconFiles(resolve(args.corpus)).map((p) =>
  JSON.parse(readFileSync(p, 'utf8')),
)
const lexicons = new Lexicons(docs)
const post = await import(
  pathToFileURL(join(resolve(args.gen), 'app', 'bsky', 'feed', 'post.ts')).href
)

const peers = {
  lex_validate: (text) => post.$validate(lexJsonToLex(JSON.parse(text))),
  lexicon_assert: (text) =>
    lexicons.assertValidRecord(NSID, lexiconJsonToLex(JSON.parse(text))),
}

// The installed versions, read from node_modules next to this file (the packages'
// "exports" do not expose package.json).
const here = new URL('.', import.meta.url)
const versions = {}
for (const pkg of ['@atproto/lex', '@atproto/lexicon']) {
  const meta = new URL(`node_modules/${pkg}/package.json`, here)
  versions[pkg] = JSON.parse(readFileSync(meta, 'utf8')).version
}

const checks = {}
if (args.cases) {
  const cases = JSON.parse(readFileSync(args.cases, 'utf8'))
  for (const [name, record] of Object.entries(cases)) {
    const text = JSON.stringify(record)
    checks[name] = {}
    for (const [peer, fn] of Object.entries(peers)) {
      try {
        fn(text)
        checks[name][peer] = { accepted: true, error: null }
      } catch (err) {
        const msg = String(err?.message ?? err).split('\n')[0].slice(0, 200)
        checks[name][peer] = { accepted: false, error: msg }
      }
    }
  }
}

const text = readFileSync(args.record, 'utf8')
const n = Number(args.n)
const warmup = Number(args.warmup)
const rates = {}
if (n > 0) {
  for (const [peer, fn] of Object.entries(peers)) {
    for (let i = 0; i < warmup; i++) fn(text)
    const start = process.hrtime.bigint()
    for (let i = 0; i < n; i++) fn(text)
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    rates[peer] = n / seconds
  }
}

process.stdout.write(
  JSON.stringify({ node: process.version, versions, checks, rates }) + '\n',
)

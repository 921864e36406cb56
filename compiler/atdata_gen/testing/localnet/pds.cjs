// The official PDS (@atproto/pds) for the local test network, configured entirely
// from PDS_* environment variables (see localnet.py). Prints "ready <port>".
'use strict'
const pds = require('@atproto/pds')

async function main() {
  const env = pds.readEnv()
  const server = await pds.PDS.create(pds.envToCfg(env), pds.envToSecrets(env))
  await server.start()
  process.stdout.write(`ready ${env.port}\n`)
  const stop = async () => { await server.destroy(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
main().catch((err) => { console.error(err); process.exit(1) })

// A PLC directory (did:plc registry) for the local test network: @did-plc/server
// with its in-memory database. Usage: node plc.cjs PORT. Prints "ready <port>".
'use strict'
const { PlcServer, Database } = require('@did-plc/server')

async function main() {
  const port = Number(process.argv[2])
  const server = PlcServer.create({ db: Database.mock(), port })
  await server.start()
  process.stdout.write(`ready ${port}\n`)
  const stop = async () => { await server.destroy(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
main().catch((err) => { console.error(err); process.exit(1) })

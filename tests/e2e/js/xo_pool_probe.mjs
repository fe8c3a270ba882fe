// Point Xen Orchestra's real `xen-api` client at one host of a pool and report
// where it ended up (it follows HOST_IS_SLAVE to the master by swapping the
// host name) and what its object cache holds once the event loop has run.
//
// Usage: node xo_pool_probe.mjs '{"url":"http://127.0.0.2:PORT","user":"root",
//                                 "password":"...","transport":"json-rpc","expectVms":N,"expectHosts":N}'
// Prints ONE JSON line: {"ok":true,"result":{...}} or {"ok":false,"error":{...}}.

import { createClient } from 'xen-api'

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function main(args) {
  const xapi = createClient({
    url: args.url,
    auth: { user: args.user, password: args.password },
    transport: args.transport,
    allowUnauthorized: true,
  })
  xapi.on('error', () => {})
  await xapi.connect()
  try {
    const deadline = Date.now() + 15e3
    let vms = []
    let hosts = []
    while (Date.now() < deadline) {
      const all = Object.values(xapi.objects.all)
      vms = all.filter(o => o.$type === 'VM' && !o.is_a_template)
      hosts = all.filter(o => o.$type === 'host')
      if (vms.length >= args.expectVms && hosts.length >= args.expectHosts) break
      await sleep(200)
    }
    return {
      connectedTo: xapi._url.hostname,
      hosts: hosts.map(h => h.address).sort(),
      vms: vms.map(vm => ({ uuid: vm.uuid, power_state: vm.power_state, resident_on: vm.resident_on,
                            is_control_domain: vm.is_control_domain })),
    }
  } finally {
    await xapi.disconnect()
  }
}

const args = JSON.parse(process.argv[2])
main(args).then(
  result => { process.stdout.write(JSON.stringify({ ok: true, result }) + '\n'); process.exit(0) },
  error => {
    process.stdout.write(JSON.stringify({ ok: false, error: { message: String(error?.message ?? error),
                                                              code: error?.code, params: error?.params } }) + '\n')
    process.exit(1)
  }
)

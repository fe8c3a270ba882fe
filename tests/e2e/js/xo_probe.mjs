// Drive a XenAPI server with Xen Orchestra's real `xen-api` client.
//
// Usage: node xo_probe.mjs '{"url":"http://127.0.0.1:PORT","user":"root",
//                            "password":"...","transport":"json-rpc","scenario":"connect"}'
//
// Prints exactly ONE JSON line on stdout:
//   {"ok":true,"scenario":...,"transport":...,"result":{...}}    exit 0
//   {"ok":false,"scenario":...,"transport":...,"error":{...}}    exit 1
//
// Expected API errors (scenario "errors") are part of the result, not a
// failure. Event watching, Async calls, barrier() and the object cache are
// deliberately not used here (watchEvents: false); xo_events_probe.mjs covers them.

import { createClient } from 'xen-api'
// not re-exported by index.mjs; the package has no "exports" map so the
// deep import is the client's own error class
import XapiError from 'xen-api/_XapiError.mjs'

function describeError(error) {
  if (error === null || typeof error !== 'object') {
    return { message: String(error) }
  }
  const out = {
    name: error.constructor?.name ?? error.name,
    isXapiError: error instanceof XapiError,
    message: error.message,
  }
  if (error.code !== undefined) out.code = error.code
  if (error.params !== undefined) out.params = error.params
  if (error.call !== undefined) {
    // the client records the failing method; params are already obfuscated
    out.call = { method: error.call.method, params: error.call.params }
  }
  if (error.cause !== undefined) out.cause = describeError(error.cause)
  if (error.stack !== undefined) out.stack = String(error.stack).split('\n').slice(0, 6).join('\n')
  return out
}

// the JS type as the client sees it ("array", "null", "Date" are distinguished)
function jsType(value) {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'array'
  if (value instanceof Date) return 'Date'
  return typeof value
}

function typed(record, fields) {
  const out = {}
  for (const field of fields) {
    const value = record[field]
    out[field] = { type: jsType(value), value: value instanceof Date ? value.toISOString() : value }
  }
  return out
}

function makeClient(args, overrides = {}) {
  return createClient({
    url: args.url,
    allowUnauthorized: true,
    transport: args.transport,
    watchEvents: false,
    auth: { user: args.user, password: args.password },
    // a hung server should fail the probe, not hang it
    callTimeout: 15e3,
    httpInactivityTimeout: 15e3,
    // never sit in retry loops for ECONNRESET in a test
    roCallRetryOptions: { tries: 1 },
    ...overrides,
  })
}

// disconnect() fires session.logout without awaiting it; since the probe exits
// right after, log out explicitly (and report the result) before disconnecting
async function logout(xapi) {
  const sessionId = xapi._sessionId
  if (sessionId === undefined) return undefined
  try {
    return { result: await xapi._call('session.logout', [sessionId]) }
  } catch (error) {
    return { error: describeError(error) }
  } finally {
    xapi._sessionId = undefined
    await xapi.disconnect()
  }
}

async function withClient(args, fn) {
  const xapi = makeClient(args)
  await xapi.connect()
  const sessionId = xapi.sessionId
  let result
  try {
    result = await fn(xapi)
  } catch (error) {
    await logout(xapi)
    throw error
  }
  result.sessionId = sessionId
  result.logout = await logout(xapi)
  return result
}

// Runs `promise`; returns the rejection (described) or throws if it resolved.
async function expectRejection(label, promise) {
  let value
  try {
    value = await promise
  } catch (error) {
    return describeError(error)
  }
  const error = new Error(`${label}: expected a rejection, got ${JSON.stringify(value)}`)
  throw error
}

const scenarios = {
  // login, pool.get_all_records, system.listMethods (the connect flow) and
  // system.listMethods through the public call()
  async connect(args) {
    return withClient(args, async xapi => {
      const status = xapi.status
      const pool = xapi.pool
      // what the connect flow derived from its own (session-less) system.listMethods
      const types = xapi._types

      const pools = await xapi.call('pool.get_all_records')
      const methods = await xapi.call('system.listMethods')
      const hostRefs = await xapi.call('host.get_all')
      const poolRefs = await xapi.call('pool.get_all')

      return {
        status,
        connectPool: { ref: pool.$ref, master: pool.master, uuid: pool.uuid, fields: Object.keys(pool) },
        connectTypes: types,
        pools: Object.fromEntries(
          Object.entries(pools).map(([ref, rec]) => [ref, { master: rec.master, uuid: rec.uuid, name_label: rec.name_label }])
        ),
        poolRefs,
        hostRefs,
        methodsType: jsType(methods),
        methodsCount: Array.isArray(methods) ? methods.length : null,
        asyncMethods: Array.isArray(methods) ? methods.filter(m => m.startsWith('Async.')).slice(0, 10) : null,
        methodsSample: Array.isArray(methods)
          ? methods.filter(m =>
              [
                'VM.get_all_records',
                'host.get_all_records',
                'pool.get_all_records',
                'pool.add_to_other_config',
                'pool.remove_from_other_config',
                'session.login_with_password',
                'event.from',
                'event.inject',
                'task.get_all_records',
              ].includes(m)
            )
          : null,
        nonStringMethods: Array.isArray(methods) ? methods.filter(m => typeof m !== 'string').length : null,
        statusAfter: xapi.status,
      }
    })
  },

  // VM.get_all_records / host.get_all_records through call()
  async records(args) {
    return withClient(args, async xapi => {
      const vms = await xapi.call('VM.get_all_records')
      const hosts = await xapi.call('host.get_all_records')
      const vmRefs = Object.keys(vms)
      const hostRefs = Object.keys(hosts)
      const keySets = recs => [...new Set(Object.values(recs).map(r => JSON.stringify(Object.keys(r).sort())))].length

      const dom0Refs = vmRefs.filter(ref => vms[ref].is_control_domain === true)
      const dom0Ref = dom0Refs[0]
      const dom0 = vms[dom0Ref]
      const hostRef = hostRefs[0]
      const host = hosts[hostRef]

      // the same record through get_record and a field getter
      const dom0Record = dom0Ref === undefined ? undefined : await xapi.call('VM.get_record', dom0Ref)
      const dom0Memory = dom0Ref === undefined ? undefined : await xapi.call('VM.get_memory_static_max', dom0Ref)
      const dom0Uuid = dom0Ref === undefined ? undefined : await xapi.call('VM.get_uuid', dom0Ref)
      const byUuid = dom0Uuid === undefined ? undefined : await xapi.call('VM.get_by_uuid', dom0Uuid)

      return {
        vmRefs,
        hostRefs,
        vmKeySetCount: keySets(vms),
        hostKeySetCount: keySets(hosts),
        dom0Refs,
        dom0:
          dom0 &&
          typed(dom0, [
            'uuid',
            'name_label',
            'is_control_domain',
            'is_a_template',
            'power_state',
            'resident_on',
            'memory_static_max',
            'memory_dynamic_min',
            'VCPUs_max',
            'domid',
            'user_version',
            'HVM_shadow_multiplier',
            'snapshot_time',
            'other_config',
            'VBDs',
            'current_operations',
            'suspend_VDI',
          ]),
        dom0RecordEqual: dom0Record === undefined ? null : JSON.stringify(dom0Record) === JSON.stringify(dom0),
        dom0Memory: { type: jsType(dom0Memory), value: dom0Memory },
        dom0ByUuid: byUuid,
        host:
          host &&
          typed(host, [
            'uuid',
            'name_label',
            'address',
            'enabled',
            'resident_VMs',
            'API_version_major',
            'API_version_minor',
            'software_version',
            'cpu_info',
            'memory_overhead',
            'host_CPUs',
            'metrics',
          ]),
      }
    })
  },

  // error mapping: HANDLE_INVALID from a bad ref, auth failure on login
  async errors(args) {
    const badRef = 'OpaqueRef:00000000-dead-beef-0000-000000000000'
    const result = await withClient(args, async xapi => {
      const badRecord = await expectRejection('VM.get_record(bad ref)', xapi.call('VM.get_record', badRef))
      const unknownMethod = await expectRejection('VM.no_such_method', xapi.call('VM.no_such_method', badRef))
      return { badRef, badRecord, unknownMethod, statusAfter: xapi.status }
    })

    const bad = makeClient({ ...args, password: args.password + '-wrong' })
    result.badLogin = await expectRejection('login with a bad password', bad.connect())
    result.badLoginStatus = bad.status
    return result
  },

  // pool.add_to_other_config / remove_from_other_config, read back each time
  async other_config(args) {
    return withClient(args, async xapi => {
      const poolRef = xapi.pool.$ref
      const key = 'xo:e2e-probe:' + Math.random().toString(36).slice(2)
      const value = 'value <&> "quoted" ' + Date.now()
      const before = await xapi.call('pool.get_other_config', poolRef)

      const addResult = await xapi.call('pool.add_to_other_config', poolRef, key, value)
      const afterAdd = await xapi.call('pool.get_other_config', poolRef)
      const recordAfterAdd = (await xapi.call('pool.get_record', poolRef)).other_config

      const duplicate = await expectRejection(
        'add_to_other_config(duplicate key)',
        xapi.call('pool.add_to_other_config', poolRef, key, 'other')
      )

      // XO's setFieldEntry: remove (no-op if absent) then add
      await xapi.setFieldEntry('pool', poolRef, 'other_config', key, 'replaced')
      const afterSetEntry = await xapi.call('pool.get_other_config', poolRef)

      const removeResult = await xapi.call('pool.remove_from_other_config', poolRef, key)
      const afterRemove = await xapi.call('pool.get_other_config', poolRef)

      // removing an absent key must be a silent no-op
      const removeAgainResult = await xapi.call('pool.remove_from_other_config', poolRef, key)
      const afterRemoveAgain = await xapi.call('pool.get_other_config', poolRef)

      // set_name_description round trip through setField()
      const oldDescription = await xapi.call('pool.get_name_description', poolRef)
      await xapi.setField('pool', poolRef, 'name_description', 'set by xo probe')
      const newDescription = await xapi.call('pool.get_name_description', poolRef)
      await xapi.setField('pool', poolRef, 'name_description', oldDescription)
      const restoredDescription = await xapi.call('pool.get_name_description', poolRef)

      return {
        poolRef,
        key,
        value,
        before,
        addResult,
        afterAdd,
        recordAfterAdd,
        duplicate,
        afterSetEntry,
        removeResult,
        afterRemove,
        removeAgainResult,
        afterRemoveAgain,
        oldDescription,
        newDescription,
        restoredDescription,
      }
    })
  },
}

async function main() {
  let args
  try {
    args = JSON.parse(process.argv[2] ?? '')
  } catch (error) {
    process.stdout.write(JSON.stringify({ ok: false, error: { message: 'bad JSON argument: ' + error.message } }) + '\n')
    return 2
  }
  const { scenario, transport } = args
  const run = scenarios[scenario]
  if (run === undefined) {
    process.stdout.write(
      JSON.stringify({ ok: false, scenario, transport, error: { message: 'unknown scenario ' + scenario } }) + '\n'
    )
    return 2
  }
  try {
    const result = await run(args)
    process.stdout.write(JSON.stringify({ ok: true, scenario, transport, result }) + '\n')
    return 0
  } catch (error) {
    process.stdout.write(JSON.stringify({ ok: false, scenario, transport, error: describeError(error) }) + '\n')
    return 1
  }
}

// exit explicitly: undici keep-alive sockets would otherwise hold the loop open
main().then(
  code => process.exit(code),
  error => {
    process.stderr.write(String(error?.stack ?? error) + '\n')
    process.exit(1)
  }
)

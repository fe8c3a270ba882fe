// Drive a XenAPI server with Xen Orchestra's real `xen-api` client WITH event
// watching (`watchEvents` left at its default, true): object cache, event.from
// loop, callAsync (Async.* + task watching), barrier().
//
// Usage: node xo_events_probe.mjs '{"url":"http://127.0.0.1:PORT","user":"root",
//                                   "password":"...","transport":"json-rpc","scenario":"cache"}'
//
// Batch scenarios print exactly ONE JSON line on stdout:
//   {"ok":true,"scenario":...,"transport":...,"result":{...}}    exit 0
//   {"ok":false,"scenario":...,"transport":...,"error":{...}}    exit 1
//
// The interactive scenario "watch" prints one JSON line per message:
//   {"event":"ready",...}      once the cache is built
//   {"event":"change",...}     for every object added/updated/removed in the cache
// and reads commands on stdin ("quit"); it ends with the same final line as the
// batch scenarios.
//
// Every RPC the client makes is recorded (by wrapping the client's own `_call`)
// so the tests can check what the client did: which methods, how often, and
// what each event.from returned.

import readline from 'node:readline'
import { createClient } from 'xen-api'
// not re-exported by index.mjs; the package has no "exports" map so the
// deep import is the client's own error class
import XapiError from 'xen-api/_XapiError.mjs'

const WAIT = 10e3 // upper bound for anything that should take well under a second

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
  if (error.call !== undefined) out.call = { method: error.call.method }
  if (error.task != null) {
    const { $ref, status, error_info: errorInfo, result } = error.task
    out.task = { ref: $ref, status, error_info: errorInfo, result }
  }
  if (error.calls !== undefined) out.calls = error.calls
  if (error.stack !== undefined) out.stack = String(error.stack).split('\n').slice(0, 6).join('\n')
  return out
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// rejects with a descriptive error if `promise` does not settle in time
function withTimeout(promise, ms, label, xapi) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => {
      const error = new Error(`${label}: not settled after ${ms} ms`)
      if (xapi !== undefined) {
        error.calls = xapi.$probe.summary()
        const watchError = xapi.watchEventsError
        if (watchError !== undefined) error.cause = watchError
      }
      reject(error)
    }, ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// Runs `promise`; returns the rejection (described) or throws if it resolved.
async function expectRejection(label, promise) {
  let value
  try {
    value = await promise
  } catch (error) {
    return describeError(error)
  }
  throw new Error(`${label}: expected a rejection, got ${JSON.stringify(value)}`)
}

// Wrap the client's `_call` (every RPC goes through it, event.from included)
function instrument(xapi) {
  const calls = [] // { method, start, end, error }
  const eventFroms = [] // what each successful event.from returned
  // the key sets of every record the client received, by lower-case class,
  // from <X>.get_all_records and from event.from snapshots alike
  const keySets = {}
  const addKeySet = (cls, record, source) => {
    if (record === null || typeof record !== 'object') return
    const key = JSON.stringify(Object.keys(record).sort())
    const sets = (keySets[cls.toLowerCase()] ??= {})
    sets[key] ??= source
  }
  const original = xapi._call
  xapi._call = function (method, args, timeout) {
    const entry = { method, start: Date.now() }
    calls.push(entry)
    const promise = original.call(this, method, args, timeout)
    promise.then(
      result => {
        entry.end = Date.now()
        if (method.startsWith('Async.')) {
          entry.result = result
        } else if (method.endsWith('.get_all_records') && result !== null && typeof result === 'object') {
          for (const record of Object.values(result)) addKeySet(method.slice(0, method.indexOf('.')), record, method)
        } else if (method === 'event.from') {
          const events = Array.isArray(result?.events) ? result.events : []
          for (const event of events) {
            if (event.snapshot !== undefined) addKeySet(String(event.class), event.snapshot, `event.from ${event.class} ${event.operation}`)
          }
          const counts = result?.valid_ref_counts
          const summary = {
            at: entry.end,
            nEvents: events.length,
            events: events.slice(0, 20).map(e => `${e.class}:${e.operation}`),
            hasValidRefCounts: counts !== null && typeof counts === 'object',
            validTasks: counts?.task,
            validTasksType: typeof counts?.task,
            tokenType: typeof result?.token,
          }
          eventFroms.push(summary)
          // after the client has processed the batch and compared the counts
          setImmediate(() => {
            summary.clientTasks = xapi._nTasks
          })
        }
      },
      error => {
        entry.end = Date.now()
        entry.error = error?.code ?? error?.message ?? String(error)
      }
    )
    return promise
  }
  const count = (method, since = 0) => calls.filter(c => c.method === method && c.start >= since).length
  xapi.$probe = {
    calls,
    eventFroms,
    count,
    asyncTaskRefs: () => calls.filter(c => c.method.startsWith('Async.') && c.result !== undefined).map(c => c.result),
    summary() {
      const byMethod = {}
      for (const { method } of calls) byMethod[method] = (byMethod[method] ?? 0) + 1
      return {
        byMethod,
        errors: calls.filter(c => c.error !== undefined).map(c => ({ method: c.method, error: c.error })),
        eventFroms: eventFroms.slice(-10),
        pending: calls.filter(c => c.end === undefined).map(c => c.method),
        // classes whose records did not all have the same keys: { class: { keys: first source } }
        keySetConflicts: Object.fromEntries(Object.entries(keySets).filter(([, sets]) => Object.keys(sets).length > 1)),
        keySetClasses: Object.keys(keySets).length,
      }
    },
  }
  return xapi
}

function makeClient(args) {
  return instrument(
    createClient({
      url: args.url,
      allowUnauthorized: true,
      transport: args.transport,
      // watchEvents: left at its default (true), as in the CLI and most users
      auth: { user: args.user, password: args.password },
      // a hung call should fail the probe (event.from has its own 66 s timeout)
      callTimeout: 15e3,
      // never sit in retry loops for ECONNRESET in a test
      roCallRetryOptions: { tries: 1 },
    })
  )
}

// Log out and make sure the event loop stays quiet afterwards: disconnect
// first (the loop then waits for a reconnection instead of re-logging in when
// the pending event.from fails with SESSION_INVALID), then session.logout.
async function logout(xapi, sessionId) {
  // let the loop get back into event.from (it waits `debounce` ms after each batch)
  const waiting = () => xapi.$probe.calls.some(c => c.method === 'event.from' && c.end === undefined)
  for (const start = Date.now(); !waiting() && Date.now() - start < 2e3; ) await sleep(10)
  xapi._sessionId = undefined
  await xapi.disconnect()
  let logout
  const pending = xapi.$probe.calls.filter(c => c.method === 'event.from' && c.end === undefined)
  const start = Date.now()
  try {
    logout = { result: await xapi._call('session.logout', [sessionId]) }
  } catch (error) {
    logout = { error: describeError(error) }
  }
  // the event.from pending in the event loop must end once its session is gone
  while (pending.some(c => c.end === undefined) && Date.now() - start < 3e3) await sleep(10)
  const eventFromAtLogout = pending.map(c => ({
    error: c.error ?? null,
    msAfterLogout: c.end === undefined ? null : c.end - start,
  }))
  return { logout, eventFromAtLogout }
}

async function withClient(args, fn) {
  const xapi = makeClient(args)
  await withTimeout(xapi.connect(), WAIT, 'connect', xapi)
  const sessionId = xapi.sessionId
  const connectedAt = Date.now()
  let result
  try {
    await withTimeout(xapi.objectsFetched, WAIT, 'objectsFetched', xapi)
    result = await fn(xapi, { connectedAt })
  } catch (error) {
    error.calls ??= xapi.$probe.summary()
    await logout(xapi, sessionId)
    throw error
  }
  result.sessionId = sessionId
  result.types ??= xapi._types
  result.watchEventsError = xapi.watchEventsError === undefined ? null : describeError(xapi.watchEventsError)
  result.calls = xapi.$probe.summary()
  Object.assign(result, await logout(xapi, sessionId))
  return result
}

// wait until `predicate()` is truthy; returns the ms it took
async function until(label, predicate, xapi, ms = WAIT) {
  const start = Date.now()
  while (!(await predicate())) {
    if (Date.now() - start > ms) {
      const error = new Error(`${label}: still false after ${ms} ms`)
      if (xapi !== undefined) error.calls = xapi.$probe.summary()
      throw error
    }
    await sleep(20)
  }
  return Date.now() - start
}

const typeIndex = xapi => xapi.objects.indexes.type

function brief(object) {
  return object && { ref: object.$ref, id: object.$id, type: object.$type, uuid: object.uuid }
}

const scenarios = {
  // the VM lifecycle through callAsync, as Xen Orchestra drives it; args.vm is
  // a halted VM made by the test. Reports the power state the client's cache
  // shows after each step, and the error of a call made in the wrong state.
  async lifecycle(args) {
    return withClient(args, async xapi => {
      const vm = args.vm
      const states = []
      const step = async (method, ...params) => {
        await xapi.callAsync(method, vm, ...params)
        const expected = (await xapi.call('VM.get_power_state', vm))
        await until(`cache shows ${expected} after ${method}`,
          () => xapi.getObjectByRef(vm, undefined)?.power_state === expected, xapi)
        states.push([method, expected])
      }
      await step('VM.start', false, false)
      let wrongState = null
      try {
        await xapi.callAsync('VM.start', vm, false, false)
      } catch (error) {
        wrongState = { code: error.code, params: error.params }
      }
      await step('VM.pause')
      await step('VM.unpause')
      await step('VM.suspend')
      await step('VM.resume', false, false)
      await step('VM.clean_reboot')
      await step('VM.clean_shutdown')
      const record = xapi.getObjectByRef(vm)
      return { states, wrongState, domid: record.domid, residentOn: record.resident_on }
    })
  },

  // the object cache after connect
  async cache(args) {
    return withClient(args, async xapi => {
      // give the event loop time to issue its first event.from (and to apply
      // what it returns: the pool event injected by the connect flow)
      await sleep(400)
      const eventFromCalls = xapi.$probe.calls.filter(c => c.method === 'event.from')

      const all = Object.values(xapi.objects.all)
      const byType = {}
      for (const object of all) {
        const entry = (byType[object.$type] ??= { refs: [], keySets: new Set(), idMismatches: [] })
        entry.refs.push(object.$ref)
        entry.keySets.add(JSON.stringify(Object.keys(object).sort()))
        if (object.$id !== (object.uuid ?? object.$ref)) entry.idMismatches.push(brief(object))
      }
      const index = typeIndex(xapi)
      const pools = Object.values(index.pool ?? {})
      const hosts = Object.values(index.host ?? {})
      const vms = Object.values(index.VM ?? {})
      const dom0s = vms.filter(vm => vm.is_control_domain === true)

      const pool = pools[0]
      const lookups = [...pools, ...hosts, ...dom0s].map(object => ({
        ...brief(object),
        byUuid: brief(xapi.getObjectByUuid(object.uuid, undefined)),
        byRef: brief(xapi.getObjectByRef(object.$ref, undefined)),
        byId: brief(xapi.getObject(object.$id, undefined)),
      }))

      return {
        types: xapi._types,
        size: xapi.objects.size,
        nObjects: all.length,
        byType: Object.fromEntries(
          Object.entries(byType).map(([type, e]) => [
            type,
            { refs: e.refs, keySetCount: e.keySets.size, keys: JSON.parse([...e.keySets][0]), idMismatches: e.idMismatches },
          ])
        ),
        indexTypes: Object.keys(index),
        pools: pools.map(brief),
        clientPool: brief(xapi.pool),
        clientPoolIsCached: xapi.pool === pool,
        poolMaster: pool && brief(pool.$master),
        hosts: hosts.map(brief),
        dom0s: dom0s.map(vm => ({
          ...brief(vm),
          name_label: vm.name_label,
          residentOn: brief(vm.$resident_on),
          power_state: vm.power_state,
        })),
        lookups,
        nTasks: xapi._nTasks,
        firstEventFrom: eventFromCalls[0] && { pending: eventFromCalls[0].end === undefined, error: eventFromCalls[0].error ?? null },
        firstBatch: xapi.$probe.eventFroms[0] ?? null,
      }
    })
  },

  // callAsync: success with a ref, failure with HANDLE_INVALID, void result,
  // and the tasks destroyed afterwards
  async async(args) {
    return withClient(args, async xapi => {
      const taskSnapshots = {}
      const taskRemovals = []
      const recordTasks = (items, action) => {
        for (const [id, object] of Object.entries(items)) {
          if (object !== undefined && object.$type === 'task') {
            ;(taskSnapshots[object.$ref] ??= []).push({
              action,
              status: object.status,
              result: object.result,
              error_info: object.error_info,
              progress: object.progress,
              name_label: object.name_label,
            })
            idToTask[id] = object.$ref
          } else if (object === undefined && idToTask[id] !== undefined) {
            taskRemovals.push(idToTask[id])
          }
        }
      }
      const idToTask = {}
      xapi.objects.on('add', items => recordTasks(items, 'add'))
      xapi.objects.on('update', items => recordTasks(items, 'update'))
      xapi.objects.on('remove', items => recordTasks(items, 'remove'))

      const tasksBefore = await xapi.call('task.get_all')
      const name = 'xo-async-' + Math.random().toString(36).slice(2)
      const record = { name_label: name, name_description: 'made by callAsync', MTU: 1500, other_config: { probe: 'yes' }, tags: [] }

      const t0 = Date.now()
      const created = await withTimeout(xapi.callAsync('network.create', record), WAIT, 'callAsync(network.create)', xapi)
      const createMs = Date.now() - t0
      const createdRecord = typeof created === 'string' ? await xapi.call('network.get_record', created) : null

      const badRef = 'OpaqueRef:bad'
      const failure = await expectRejection(
        'callAsync(network.destroy, bad ref)',
        withTimeout(xapi.callAsync('network.destroy', badRef), WAIT, 'callAsync(network.destroy, bad ref)', xapi)
      )

      const destroyed = await withTimeout(xapi.callAsync('network.destroy', created), WAIT, 'callAsync(network.destroy)', xapi)
      const afterDestroy = await expectRejection('network.get_record(destroyed)', xapi.call('network.get_record', created))

      const taskRefs = xapi.$probe.asyncTaskRefs()
      // task.destroy is fired (not awaited) by callAsync once the task settles
      let leftover
      const destroyedWithinMs = await until(
        'Async tasks destroyed',
        async () => {
          const now = await xapi.call('task.get_all')
          leftover = taskRefs.filter(ref => now.includes(ref))
          return leftover.length === 0
        },
        xapi,
        3e3
      ).catch(error => ({ error: error.message }))
      const tasksAfter = await xapi.call('task.get_all')
      const removedFromCacheMs = await until(
        'Async tasks gone from cache',
        () => taskRefs.every(ref => xapi.getObjectByRef(ref, undefined) === undefined),
        xapi,
        3e3
      ).catch(error => ({ error: error.message }))
      const destroyCalls = xapi.$probe.calls
        .filter(c => c.method === 'task.destroy')
        .map(c => ({ error: c.error ?? null, done: c.end !== undefined }))

      return {
        name,
        created,
        createMs,
        createdRecord: createdRecord && {
          name_label: createdRecord.name_label,
          name_description: createdRecord.name_description,
          MTU: createdRecord.MTU,
          other_config: createdRecord.other_config,
        },
        failure,
        badRef,
        destroyed,
        afterDestroy,
        taskRefs,
        taskSnapshots,
        taskRemovals,
        tasksBefore,
        tasksAfter,
        leftover,
        destroyedWithinMs,
        removedFromCacheMs,
        destroyCalls,
        nTasks: xapi._nTasks,
      }
    })
  },

  // barrier(): pool.add_to_other_config + wait for the pool mod event
  async barrier(args) {
    return withClient(args, async xapi => {
      const poolRef = xapi.pool.$ref
      const timings = []
      for (let i = 0; i < 3; ++i) {
        const t0 = Date.now()
        await withTimeout(xapi.barrier(), WAIT, `barrier #${i}`, xapi)
        timings.push(Date.now() - t0)
      }
      // concurrent barriers
      const t0 = Date.now()
      await withTimeout(Promise.all([xapi.barrier(), xapi.barrier(), xapi.barrier()]), WAIT, 'concurrent barriers', xapi)
      const concurrentMs = Date.now() - t0

      // barrier(ref) returns the cached object
      const withRef = await withTimeout(xapi.barrier(poolRef), WAIT, 'barrier(poolRef)', xapi)
      const withRefIsCachedPool = withRef === xapi.pool && withRef === xapi.getObjectByRef(poolRef)

      // a change this client made before the barrier is in the cache right after it
      const networkRef = await xapi.call('network.create', {
        name_label: 'xo-barrier',
        name_description: '',
        MTU: 1500,
        other_config: {},
      })
      await xapi.call('network.set_name_label', networkRef, 'xo-barrier-renamed')
      await withTimeout(xapi.barrier(), WAIT, 'barrier after network change', xapi)
      const cachedNetwork = xapi.getObjectByRef(networkRef, undefined)
      const seenAfterBarrier = cachedNetwork && { name_label: cachedNetwork.name_label, MTU: cachedNetwork.MTU }
      await xapi.call('network.destroy', networkRef)
      await withTimeout(xapi.barrier(), WAIT, 'barrier after network destroy', xapi)
      const goneAfterBarrier = xapi.getObjectByRef(networkRef, undefined) === undefined

      // the barrier keys are removed (fire-and-forget) after each barrier
      let serverKeys, cacheKeys
      const keysGoneMs = await until(
        'barrier keys removed',
        async () => {
          serverKeys = Object.keys(await xapi.call('pool.get_other_config', poolRef)).filter(k => k.startsWith('xo:barrier:'))
          cacheKeys = Object.keys(xapi.pool.other_config).filter(k => k.startsWith('xo:barrier:'))
          return serverKeys.length === 0 && cacheKeys.length === 0
        },
        xapi,
        3e3
      ).catch(error => ({ error: error.message }))

      return {
        poolRef,
        timings,
        concurrentMs,
        withRef: brief(withRef),
        withRefIsCachedPool,
        networkRef,
        seenAfterBarrier,
        goneAfterBarrier,
        keysGoneMs,
        serverKeys,
        cacheKeys,
        addCalls: xapi.$probe.count('pool.add_to_other_config'),
        removeCalls: xapi.$probe.count('pool.remove_from_other_config'),
      }
    })
  },

  // valid_ref_counts: tasks come and go; the client must not refetch tasks
  // after every event.from, and must not spin when nothing happens
  async tasks(args) {
    return withClient(args, async xapi => {
      const initialTaskFetches = xapi.$probe.count('task.get_all_records')

      const churnStart = Date.now()
      // Async tasks (created, completed, destroyed by callAsync)
      const refs = []
      for (let i = 0; i < 3; ++i) {
        refs.push(
          await withTimeout(
            xapi.callAsync('network.create', { name_label: `xo-churn-${i}`, name_description: '', MTU: 1500, other_config: {} }),
            WAIT,
            'callAsync(network.create)',
            xapi
          )
        )
      }
      await Promise.all(
        refs.map(ref => withTimeout(xapi.callAsync('network.destroy', ref), WAIT, 'callAsync(network.destroy)', xapi))
      )
      // a client task (XO's createTask: task.create, destroyed by the client
      // once it settles), completed by this client like an HTTP handler would
      const clientTask = await xapi.createTask('xo-churn', 'client task')
      await until('client task cached', () => xapi.getObjectByRef(clientTask, undefined) !== undefined, xapi, 3e3)
      await xapi.call('task.set_result', clientTask, '<value>done</value>')
      await xapi.call('task.set_status', clientTask, 'success')
      const clientTaskResult = await withTimeout(xapi.watchTask(clientTask), WAIT, 'watchTask(client task)', xapi)
      await until('client task uncached', () => xapi.getObjectByRef(clientTask, undefined) === undefined, xapi, 3e3)
      // let the fire-and-forget task.destroy calls land, then sync with a barrier
      await until(
        'Async tasks destroyed',
        async () => {
          const now = await xapi.call('task.get_all')
          return xapi.$probe.asyncTaskRefs().every(ref => !now.includes(ref))
        },
        xapi,
        3e3
      )
      await withTimeout(xapi.barrier(), WAIT, 'barrier after churn', xapi)
      // the barrier's key removal (fire and forget) produces one more pool event:
      // the quiet period starts once it is in the cache, however slow the machine
      await until(
        'barrier key removed',
        () => !Object.keys(xapi.pool.other_config).some(k => k.startsWith('xo:barrier:')),
        xapi
      )
      await sleep(100)
      const churnTaskFetches = xapi.$probe.count('task.get_all_records', churnStart)
      const churnEventFroms = xapi.$probe.eventFroms.filter(e => e.at >= churnStart)

      // a quiet period: event.from must block, not spin, and nothing is refetched
      const quietStart = Date.now()
      await sleep(1500)
      const quietCalls = xapi.$probe.calls.filter(c => c.start >= quietStart).map(c => c.method)
      const quietEventFromReturns = xapi.$probe.eventFroms.filter(e => e.at >= quietStart).length

      const serverTasks = await xapi.call('task.get_all')
      const cachedTasks = Object.values(typeIndex(xapi).task ?? {}).map(t => t.$ref)

      return {
        initialTaskFetches,
        churnTaskFetches,
        churnEventFroms,
        quietCalls,
        quietEventFromReturns,
        serverTasks,
        cachedTasks,
        nTasks: xapi._nTasks,
        asyncTaskRefs: xapi.$probe.asyncTaskRefs(),
        clientTask,
        clientTaskResult,
        totalTaskFetches: xapi.$probe.count('task.get_all_records'),
      }
    })
  },

  // interactive: report every cache change while the test changes things with
  // another client; "quit" on stdin ends it
  async watch(args) {
    const emit = message => process.stdout.write(JSON.stringify(message) + '\n')
    return withClient(args, async (xapi, { connectedAt }) => {
      const idToRef = {}
      for (const object of Object.values(xapi.objects.all)) idToRef[object.$id] = [object.$type, object.$ref]
      const onChange = action => items => {
        const t = Date.now() / 1e3
        for (const [id, object] of Object.entries(items)) {
          if (object !== undefined) idToRef[id] = [object.$type, object.$ref]
          const [type, ref] = idToRef[id] ?? [undefined, undefined]
          const change = { event: 'change', action, t, id, type, ref }
          if (object !== undefined) {
            change.uuid = object.uuid
            change.name_label = object.name_label
            change.name_description = object.name_description
            if (type === 'network') change.record = { ...object }
            if (object.other_config !== undefined) change.other_config = object.other_config
            if (type === 'task') {
              change.status = object.status
              change.result = object.result
              change.error_info = object.error_info
            }
          }
          emit(change)
        }
      }
      for (const action of ['add', 'update', 'remove']) xapi.objects.on(action, onChange(action))

      emit({
        event: 'ready',
        t: Date.now() / 1e3,
        connectedAt: connectedAt / 1e3,
        sessionId: xapi.sessionId,
        networks: Object.values(typeIndex(xapi).network ?? {}).map(n => n.$ref),
        poolRef: xapi.pool.$ref,
      })

      const lines = readline.createInterface({ input: process.stdin })
      for await (const line of lines) {
        if (line.trim() === 'quit') break
      }
      lines.close()
      return {
        loginCalls: xapi.$probe.count('session.login_with_password'),
        taskFetches: xapi.$probe.count('task.get_all_records'),
        eventFroms: xapi.$probe.eventFroms.length,
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

// exit explicitly: undici keep-alive sockets and the pending event.from would
// otherwise hold the loop open
main().then(
  code => process.exit(code),
  error => {
    process.stderr.write(String(error?.stack ?? error) + '\n')
    process.exit(1)
  }
)

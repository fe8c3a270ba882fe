'use strict'
// Reads (and merges) VHD files with Xen Orchestra's vhd-lib, for
// tests/integration/test_vhd_tools.py.  One JSON argument, one JSON line out.
//
//   {"op": "chain", "path": leaf}   follow the chain the way vhd-lib does
//       (header parentUnicodeName, relative to the child), check every
//       layer's checksums and footer copies, then build vhd-lib's synthetic
//       (flattened) VHD of the chain and hash its raw content
//   {"op": "layer", "path": p}      hash one file's raw content, no parent
//   {"op": "merge", "parent": p, "child": c}   vhd-lib's mergeVhd (coalesce)
//   {"op": "write", "path": p, "sector": n, "dataFile": f}   Vhd#writeData

const crypto = require('crypto')
const fs = require('fs')
const fsp = require('fs/promises')
const os = require('os')
const path = require('path')
const { pipeline } = require('stream/promises')

const { default: Vhd, createContentStream, createSyntheticStream, mergeVhd, checkVhdChain } = require('vhd-lib')
const resolveRelativeFromFile = require('vhd-lib/dist/_resolveRelativeFromFile').default
const { DISK_TYPE_DYNAMIC } = require('vhd-lib/dist/_constants')

// The subset of @xen-orchestra/fs's RemoteHandler that vhd-lib 0.7 uses,
// rooted at "/" (vhd-lib resolves parents to root-relative paths).
const abs = p => path.resolve('/', p)
const handler = {
  async openFile (p, flags) {
    const fh = await fsp.open(abs(p), flags)
    return { fh, path: p }
  },
  async closeFile (f) {
    await f.fh.close()
  },
  async _with (file, flags, fn) {
    if (typeof file === 'string') {
      const fh = await fsp.open(abs(file), flags)
      try {
        return await fn(fh)
      } finally {
        await fh.close()
      }
    }
    return fn(file.fh)
  },
  read (file, buffer, position) {
    return this._with(file, 'r', async fh => {
      let done = 0
      while (done < buffer.length) {
        const { bytesRead } = await fh.read(buffer, done, buffer.length - done, position + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
      return { bytesRead: done, buffer }
    })
  },
  write (file, buffer, position) {
    return this._with(file, 'r+', async fh => {
      let done = 0
      while (done < buffer.length) {
        const { bytesWritten } = await fh.write(buffer, done, buffer.length - done, position + done)
        done += bytesWritten
      }
      return { bytesWritten: done }
    })
  },
  getSize (file) {
    return this._with(file, 'r', async fh => (await fh.stat()).size)
  },
}

async function hashStream (stream) {
  const hash = crypto.createHash('sha256')
  let size = 0
  for await (const chunk of stream) {
    hash.update(chunk)
    size += chunk.length
  }
  return { sha256: hash.digest('hex'), size }
}

const hex = buf => Buffer.from(buf).toString('hex')
const uuidOf = buf => {
  const h = hex(buf)
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

async function describe (p) {
  const file = await handler.openFile(p, 'r')
  try {
    const vhd = new Vhd(handler, file)
    await vhd.readHeaderAndFooter(true) // checksums, footer copy == footer
    await vhd.readBlockAllocationTable()
    let blocks = 0
    for (let i = 0; i < vhd.header.maxTableEntries; ++i) {
      if (vhd.containsBlock(i)) ++blocks
    }
    return {
      path: abs(p),
      diskType: vhd.footer.diskType,
      currentSize: vhd.footer.currentSize,
      uuid: uuidOf(vhd.footer.uuid),
      parentUuid: uuidOf(vhd.header.parentUuid),
      parentUnicodeName: vhd.header.parentUnicodeName,
      blockSize: vhd.header.blockSize,
      allocatedBlocks: blocks,
      creatorApplication: vhd.footer.creatorApplication,
    }
  } finally {
    await handler.closeFile(file)
  }
}

async function main () {
  const args = JSON.parse(process.argv[2])
  const rel = p => path.relative('/', path.resolve(p))
  if (args.op === 'chain') {
    const leaf = rel(args.path)
    await checkVhdChain(handler, leaf)
    const layers = []
    let p = leaf
    for (;;) {
      const info = await describe(p)
      layers.push(info)
      if (info.diskType === DISK_TYPE_DYNAMIC) break
      p = resolveRelativeFromFile(p, info.parentUnicodeName)
    }
    // vhd-lib flattens the chain itself into one dynamic VHD...
    const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vhd-probe-'))
    try {
      const synthetic = path.join(tmp, 'synthetic.vhd')
      const stream = await createSyntheticStream(handler, leaf)
      await pipeline(stream, fs.createWriteStream(synthetic))
      const flat = await describe(rel(synthetic))
      // ...whose raw content is the chain's data
      const digest = await hashStream(createContentStream(handler, rel(synthetic)))
      return { layers, synthetic: flat, ...digest }
    } finally {
      await fsp.rm(tmp, { recursive: true, force: true })
    }
  }
  if (args.op === 'layer') {
    const info = await describe(rel(args.path))
    return { layer: info, ...(await hashStream(createContentStream(handler, rel(args.path)))) }
  }
  if (args.op === 'merge') {
    const merged = await mergeVhd(handler, rel(args.parent), handler, rel(args.child))
    return { merged }
  }
  if (args.op === 'write') {
    const file = await handler.openFile(rel(args.path), 'r+')
    try {
      const vhd = new Vhd(handler, file)
      await vhd.readHeaderAndFooter()
      await vhd.readBlockAllocationTable()
      await vhd.writeData(args.sector, await fsp.readFile(args.dataFile))
    } finally {
      await handler.closeFile(file)
    }
    return { written: true }
  }
  throw new Error(`unknown op ${args.op}`)
}

main().then(
  result => {
    process.stdout.write(JSON.stringify({ ok: true, result }) + '\n')
  },
  error => {
    process.stdout.write(JSON.stringify({ ok: false, error: String((error && error.stack) || error) }) + '\n')
    process.exitCode = 1
  }
)

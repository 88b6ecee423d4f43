// A real Yjs client (y-websocket's WebsocketProvider on Node, with the `ws` polyfill), driven by pytest.
//
// Usage: [YCLIENT_PROTOCOLS=a,b] node yclient.mjs SERVER_URL ROOM [TOKEN]
// It reads one JSON command per line on stdin and prints one JSON event per line on stdout:
//   events: {"event":"status","status":...}  {"event":"synced"}  {"event":"connection-close","code":..,"reason":..}
//           {"event":"closed","code":..,"reason":..} (the provider gave up: close code 4400-4499)
//           {"event":"denied","reason":..}  (a y-protocols permission-denied message)
//           {"event":"done","id":..}  after each command; {"event":"dump","id":..,"doc":{m,a,t}}
//   commands: {"op":"set","key":k,"value":v}  {"op":"push","values":[...]}  {"op":"burst","n":N,"prefix":p}
//             {"op":"insert","index":i,"text":s}
//             {"op":"wait","map_keys":[...],"array_len":n,"text_includes":[...],"awareness_count":n}
//             {"op":"awareness","state":{...}}  {"op":"dump"}  {"op":"exit"}
// Every command carries an "id" echoed in its "done"/"dump" event. "wait" answers once the document
// (and awareness) satisfy every condition given; the pytest side bounds it with a timeout.
import * as readline from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const [serverUrl, room, token] = process.argv.slice(2)
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const doc = new Y.Doc()
const map = doc.getMap('m')
const arr = doc.getArray('a')
const text = doc.getText('t')

const origWarn = console.warn
console.warn = (...args) => {
  const msg = args.join(' ')
  if (msg.startsWith('Permission denied')) print({ event: 'denied', reason: msg })
  else origWarn(...args)
}

const params = token ? { token } : {}
// YCLIENT_PROTOCOLS: comma-separated subprotocols for the provider's `protocols` option
const protocols = process.env.YCLIENT_PROTOCOLS ? process.env.YCLIENT_PROTOCOLS.split(',') : undefined
const provider = new WebsocketProvider(serverUrl, room, doc, {
  WebSocketPolyfill: WebSocket, params, disableBc: true, maxBackoffTime: 500, protocols
})
print({ event: 'url', url: provider.url })
provider.on('status', ({ status }) => print({ event: 'status', status }))
provider.on('sync', (state) => { if (state) print({ event: 'synced' }) })
provider.on('connection-close', (ev) => print({ event: 'connection-close', code: ev ? ev.code : null, reason: ev ? ev.reason : null }))
provider.on('closed', (ev) => print({ event: 'closed', code: ev.code, reason: ev.reason }))

const content = () => ({ m: map.toJSON(), a: arr.toJSON(), t: text.toString() })

const waiters = []
const satisfied = (c) =>
  (c.map_keys || []).every((k) => map.has(k)) &&
  arr.length >= (c.array_len || 0) &&
  (c.text_includes || []).every((s) => text.toString().includes(s)) &&
  (c.awareness_count === undefined || provider.awareness.getStates().size === c.awareness_count)
const check = () => {
  for (let i = waiters.length - 1; i >= 0; i--) {
    if (satisfied(waiters[i])) {
      print({ event: 'done', id: waiters[i].id })
      waiters.splice(i, 1)
    }
  }
}
doc.on('update', check)
provider.awareness.on('change', check)

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const c = JSON.parse(line)
  switch (c.op) {
    case 'set': map.set(c.key, c.value); break
    case 'push': arr.push(c.values); break
    case 'burst':
      for (let i = 0; i < c.n; i++) arr.push([`${c.prefix}${i}`])
      break
    case 'insert': text.insert(Math.min(c.index, text.length), c.text); break
    case 'awareness': provider.awareness.setLocalState(c.state); break
    case 'wait': waiters.push(c); check(); return
    case 'dump': print({ event: 'dump', id: c.id, doc: content() }); return
    case 'exit': {
      // close cleanly: the socket sends what it buffered, then the close frame; exit once it is closed
      const ws = provider.ws
      provider.destroy()
      const bye = () => { print({ event: 'done', id: c.id }); process.exit(0) }
      if (ws && ws.readyState !== WebSocket.CLOSED) {
        ws.on('close', bye)
        setTimeout(bye, 3000)
      } else bye()
      return
    }
  }
  print({ event: 'done', id: c.id })
})
rl.on('close', () => { provider.destroy(); process.exit(0) })

// Unit test of the page's task-stream store (static/js/store.js), without a browser: at a
// sustained rate far beyond what the page keeps one by one, the store stays bounded and still
// covers every task of its window (single events count 1, spans count their tasks).
//
//   node e2e/store.test.mjs
import assert from "node:assert/strict";
import { store, applyFrame, fillGap, STREAM_WINDOW_MS } from "../static/js/store.js";

const ms = 1e6, t0 = 1_800_000_000_000 * ms;
let time = t0, key = 0, sent = 0;
const frame = (events, dropped = 0) => applyFrame({ dropped, frame: {
  time, full: true, workers: [{ address: "w0", name: "w0", nthreads: 4, spilled: 0, last_seen: time / 1e9 }],
  groups: [], totals: { completed: sent }, memory: { used: 0, limit: 0, spilled: 0, managed: 0 }, events,
  tasks_per_second: 0, source_dropped: 0 } });

// 20 s at 100,000 tasks a second, 10 frames a second: 500 single events and spans per thread
for (let f = 0; f < 200; f++) {
  time += 100 * ms;
  const events = [];
  for (let i = 0; i < 500; i++) {
    const stop = time - (500 - i) * 0.2 * ms;
    events.push({ kind: "task", key: `k-${key++}`, group: "g", worker: "w0", thread: i % 4, start: stop - 0.01 * ms, stop });
  }
  for (let th = 0; th < 4; th++) {
    events.push({ kind: "task", group: "g", worker: "w0", thread: th, start: time - 100 * ms, stop: time, count: 2375, busy: 2375 * 0.01 * ms });
  }
  sent += 500 + 4 * 2375;
  frame(events);
}
const covered = store.stream.reduce((a, e) => a + (e.count || 1), 0);
assert.ok(store.stream.length <= 20000 + 504, `the store is bounded: ${store.stream.length} items`);
assert.equal(covered, sent, "every task of the window is still covered");

// past the window, tasks leave
time += STREAM_WINDOW_MS * ms + ms;
frame([]);
assert.equal(store.stream.length, 0, `tasks older than the window are dropped: ${JSON.stringify(store.stream.map((e) => [e.stop - (time - STREAM_WINDOW_MS * ms), e.count]))}`);

// a dropped frame opens a gap; the recording fills it without duplicating what the page has
frame([{ kind: "task", key: "a", group: "g", worker: "w0", thread: 0, start: time - 5, stop: time - 1 }]);
const last = time;
time += 300 * ms;
frame([], 2);
assert.deepEqual(store.gaps.at(-1), [last, time]);
fillGap({ tasks: [{ key: "a", group: "g", worker: "w0", thread: 0, start: last - 5, stop: last - 1, nbytes: 1 },
  { key: "b", group: "g", worker: "w0", thread: 1, start: last, stop: last + 100 * ms, nbytes: 1 }] });
assert.deepEqual(store.stream.map((e) => e.key).sort(), ["a", "b"]);
console.log("store.test: PASS");

/**
 * Preloaded into a server child (`node --import ./bench/profile-window.mjs …`) when
 * BENCH_PROFILE_WINDOW is set: SIGUSR2 starts a CPU profile, the next SIGUSR2 writes it to
 * BENCH_PROFILE_DIR. Lets the bench profile one phase (a fan-out) instead of the whole run.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

const dir = process.env.BENCH_PROFILE_DIR ?? '/tmp';
const session = new Session();
session.connect();
let running = false;
let n = 0;
process.on('SIGUSR2', () => {
  if (!running) {
    running = true;
    session.post('Profiler.enable', () =>
      session.post('Profiler.setSamplingInterval', { interval: 100 }, () => session.post('Profiler.start')),
    );
    return;
  }
  running = false;
  session.post('Profiler.stop', (err, result) => {
    if (!err) writeFileSync(path.join(dir, `window-${++n}.cpuprofile`), JSON.stringify(result.profile));
  });
});

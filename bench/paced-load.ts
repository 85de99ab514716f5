/** Child process of the bench: runs one paced load (bench/lib.ts pacedLoad) and reports it over IPC. */
import { type PacedLoadOptions, runPacedLoad } from './lib.js';

process.once('message', (m: { type: 'run'; opts: PacedLoadOptions }) => {
  void runPacedLoad(m.opts).then((result) => process.send!({ type: 'done', result }));
});

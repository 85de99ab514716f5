import type { Services } from '../services.js';

export interface Readiness {
  ready: boolean;
  checks: Record<string, 'ok' | 'fail' | 'not configured'>;
}

const CHECK_TIMEOUT_MS = 2_000;

/** Database and Redis reachable, each bounded so a hung dependency answers 503, not a hang. */
export async function checkReadiness(services: Services): Promise<Readiness> {
  const [database, redis] = await Promise.all([
    probe(() => services.db.ping()),
    services.redis ? probe(() => services.redis!.ping().then(() => undefined)) : Promise.resolve('not configured' as const),
  ]);
  const checks = { database, redis };
  return { ready: database === 'ok' && redis !== 'fail', checks };
}

async function probe(fn: () => Promise<void>): Promise<'ok' | 'fail'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'fail'>((resolve) => {
    timer = setTimeout(() => resolve('fail'), CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([fn().then(() => 'ok' as const), timeout]);
  } catch {
    return 'fail';
  } finally {
    clearTimeout(timer);
  }
}

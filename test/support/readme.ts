import { type ChildProcess, spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '../..');

/** The fenced block after `<!-- test: NAME -->` in a README section (`## Title`). */
export async function readmeBlock(section: string, name: string): Promise<string> {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf(`\n## ${section}\n`);
  if (start < 0) throw new Error(`README: no section "${section}"`);
  const rest = readme.slice(start + 1);
  const next = rest.indexOf('\n## ', 1);
  const body = next < 0 ? rest : rest.slice(0, next);
  return blockIn(body, name, `README "${section}"`);
}

/** The fenced block after `<!-- test: NAME -->` in a document of docs/ (e.g. `automation.md`). */
export async function docBlock(file: string, name: string): Promise<string> {
  return blockIn(await readFile(path.join(ROOT, 'docs', file), 'utf8'), name, `docs/${file}`);
}

function blockIn(text: string, name: string, where: string): string {
  const m = new RegExp(`<!-- test: ${name} -->\\n\`\`\`\\w+\\n([\\s\\S]*?)\`\`\`\\n`).exec(text);
  if (!m) throw new Error(`${where}: no block "${name}"`);
  return m[1]!;
}

/** The environment a user's shell has: nothing of the test runner's own settings. */
export function userEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const {
    DATABASE_URL: _d,
    REDIS_URL: _r,
    ENCRYPTION_KEY: _k,
    VITEST: _v,
    NODE_ENV: _n,
    LOG_LEVEL: _l,
    PVEGRAPH_TOKEN: _t,
    PVEGRAPH_URL: _u,
    ...rest
  } = process.env;
  return { ...rest, ...extra };
}

/** A command in its own process group (so npm and what it started stop together), output collected. */
export function startGroup(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): { child: ChildProcess; output: () => string } {
  const child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return { child, output: () => out };
}

/** Stops a process group started by startGroup. */
export function stopGroup(child: ChildProcess | undefined): void {
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** What waitForOutput looks for: a RegExp, or anything that finds a match the same way. */
export interface OutputMatcher {
  exec(text: string): RegExpMatchArray | null;
}

/** Resolves once `pattern` matches the output collected so far; rejects if the process exits first. */
export function waitForOutput(
  child: ChildProcess,
  output: () => string,
  pattern: OutputMatcher,
  what: string,
): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = pattern.exec(output());
      if (!m) return;
      child.stdout!.off('data', check);
      child.off('exit', exited);
      resolve(m);
    };
    const exited = (code: number | null) => reject(new Error(`exited with ${code} before ${what}:\n${output()}`));
    child.stdout!.on('data', check);
    child.on('exit', exited);
    check();
  });
}

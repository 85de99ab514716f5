/**
 * A Lua script with only the shared definitions it uses.
 *
 * Every script of the store starts with the same definitions (redis-scripts.ts), and Redis
 * keeps each loaded script's compiled functions in its one Lua heap. Lua's garbage collector
 * walks that heap in steps, and Redis runs a larger step every 50 scripts, inside whichever
 * script comes next: with every definition in every script the heap held about 300 KB of
 * copies, and that step made one script in fifty up to three times as slow as the others.
 * Each script also defines its functions again on every run, so a definition it does not use
 * costs it time too.
 *
 * The definitions are split at their top-level `local` declarations (with the comment lines
 * before each); a script keeps those whose names it mentions, then those those mention, and so
 * on, in their original order (a Lua local is seen only by code after it). Names are matched
 * as whole words outside comments, so a mention in a string keeps a definition too: a
 * definition is sometimes kept for nothing, never dropped while used.
 */

interface Definition {
  names: string[];
  text: string;
  /** Identifiers the definition's code mentions (comments left out). */
  mentions: Set<string>;
}

const IDENTIFIER = /[A-Za-z_][A-Za-z0-9_]*/g;

function mentions(lua: string): Set<string> {
  const code = lua.replace(/--.*$/gm, '');
  return new Set(code.match(IDENTIFIER) ?? []);
}

function split(definitions: string): Definition[] {
  const parts: Definition[] = [];
  let comments: string[] = [];
  let current: string[] | null = null;
  const close = () => {
    if (!current) return;
    const text = current.join('\n');
    const head = current.find((line) => line.startsWith('local '))!;
    const fn = /^local function ([A-Za-z_][A-Za-z0-9_]*)/.exec(head);
    const names = fn
      ? [fn[1]!]
      : head
          .slice('local '.length)
          .split('=')[0]!
          .split(',')
          .map((n) => n.trim());
    parts.push({ names, text, mentions: mentions(text) });
    current = null;
  };
  for (const line of definitions.split('\n')) {
    if (line.startsWith('local ')) {
      close();
      current = [...comments, line];
      comments = [];
    } else if (line.startsWith('--') || line.trim() === '') {
      comments.push(line);
    } else if (current) {
      current.push(...comments, line);
      comments = [];
    } else {
      throw new Error(`a top-level line of the Lua definitions is not a local declaration: ${line}`);
    }
  }
  close();
  return parts;
}

/**
 * `script` is `definitions` followed by the script's own code: the result keeps only the
 * definitions that code needs. A script that does not start with them is returned unchanged.
 */
export function withDefinitionsUsed(definitions: string, script: string): string {
  if (!script.startsWith(definitions)) return script;
  const body = script.slice(definitions.length);
  const parts = split(definitions);
  const definer = new Map<string, Definition>();
  for (const part of parts) for (const name of part.names) definer.set(name, part);
  const kept = new Set<Definition>();
  const visit = (words: Set<string>) => {
    for (const word of words) {
      const part = definer.get(word);
      if (part && !kept.has(part)) {
        kept.add(part);
        visit(part.mentions);
      }
    }
  };
  visit(mentions(body));
  return `${parts
    .filter((part) => kept.has(part))
    .map((part) => part.text)
    .join('\n')}\n${body}`;
}

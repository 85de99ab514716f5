import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';

/**
 * Encryption at rest for node secrets: AES-256-GCM, a fresh 96-bit IV per value.
 *
 * Stored form: `enc:v1:<keyId>:<iv>:<tag>:<ciphertext>` (base64url parts). `keyId` is derived
 * from the key itself (first 8 hex chars of its SHA-256), so rotating keys needs no numbering:
 * configure the new key first and the old ones after it; values name the key they need.
 * `context` is bound as additional authenticated data (e.g. `node:<id>:tokenSecret`), so a
 * ciphertext copied into another row or column fails to decrypt instead of leaking.
 */
const FORMAT = 'enc';
const VERSION = 'v1';
const IV_BYTES = 12;

export class SecretBoxError extends Error {
  override name = 'SecretBoxError';
}

export function keyIdOf(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 8);
}

export class SecretBox {
  private readonly current: { id: string; key: Buffer };
  private readonly byId: Map<string, Buffer>;

  /** `keys[0]` encrypts; every key decrypts what was written with it. */
  constructor(keys: readonly Buffer[]) {
    if (keys.length === 0) throw new SecretBoxError('at least one encryption key is required');
    for (const k of keys) if (k.length !== 32) throw new SecretBoxError('encryption keys must be 32 bytes');
    this.byId = new Map(keys.map((k) => [keyIdOf(k), k]));
    this.current = { id: keyIdOf(keys[0]!), key: keys[0]! };
  }

  get currentKeyId(): string {
    return this.current.id;
  }

  encrypt(plaintext: string, context: string): string {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.current.key, iv);
    cipher.setAAD(Buffer.from(context, 'utf8'));
    const ciphertext = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    const tag = cipher.getAuthTag();
    return [FORMAT, VERSION, this.current.id, b64(iv), b64(tag), b64(ciphertext)].join(':');
  }

  decrypt(stored: string, context: string): string {
    const parts = stored.split(':');
    if (parts.length !== 6 || parts[0] !== FORMAT || parts[1] !== VERSION) {
      throw new SecretBoxError('not an encrypted value of a known format');
    }
    const [, , keyId, iv, tag, ciphertext] = parts as [string, string, string, string, string, string];
    const key = this.byId.get(keyId);
    if (!key) throw new SecretBoxError(`no configured encryption key has id ${keyId}`);
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
    decipher.setAAD(Buffer.from(context, 'utf8'));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    try {
      return Buffer.concat([decipher.update(Buffer.from(ciphertext, 'base64url')), decipher.final()]).toString('utf8');
    } catch {
      throw new SecretBoxError('encrypted value failed authentication (wrong key or context)');
    }
  }

  /** True when `stored` was written with an older key and should be re-encrypted. */
  needsRotation(stored: string): boolean {
    return stored.split(':')[2] !== this.current.id;
  }
}

function b64(buf: Buffer): string {
  return buf.toString('base64url');
}

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SecretBox } from '../../src/crypto/secret-box.js';

describe('secrets at rest (AES-256-GCM)', () => {
  const key = randomBytes(32);
  const box = new SecretBox([key]);

  it('round-trips and never stores the plaintext', () => {
    const stored = box.encrypt('s3cr3t-token-value', 'node:1:tokenSecret');
    expect(stored).toMatch(/^enc:v1:[0-9a-f]{8}:/);
    expect(stored).not.toContain('s3cr3t');
    expect(box.decrypt(stored, 'node:1:tokenSecret')).toBe('s3cr3t-token-value');
  });

  it('uses a fresh IV per value: the same secret encrypts differently each time', () => {
    const a = box.encrypt('same', 'ctx');
    const b = box.encrypt('same', 'ctx');
    expect(a).not.toBe(b);
    expect(a.split(':')[3]).not.toBe(b.split(':')[3]);
  });

  it('refuses a value moved to another row or column, and a tampered value', () => {
    const stored = box.encrypt('secret', 'node:1:tokenSecret');
    expect(() => box.decrypt(stored, 'node:2:tokenSecret')).toThrow(/authentication/);
    const parts = stored.split(':');
    const ct = Buffer.from(parts[5]!, 'base64url');
    ct[0] = ct[0]! ^ 1;
    parts[5] = ct.toString('base64url');
    expect(() => box.decrypt(parts.join(':'), 'node:1:tokenSecret')).toThrow(/authentication/);
  });

  it('rotates keys: old values still decrypt, new values use the new key', () => {
    const oldValue = box.encrypt('secret', 'ctx');
    const rotated = new SecretBox([randomBytes(32), key]);
    expect(rotated.decrypt(oldValue, 'ctx')).toBe('secret');
    expect(rotated.needsRotation(oldValue)).toBe(true);
    const newValue = rotated.encrypt('secret', 'ctx');
    expect(rotated.needsRotation(newValue)).toBe(false);
    expect(() => box.decrypt(newValue, 'ctx')).toThrow(/no configured encryption key/);
  });
});

import { describe, expect, it } from 'vitest';
import { plainResources, resourcesSchema } from '../../src/proxmox/schemas.js';

describe('plainResources (the hand check of /cluster/resources)', () => {
  it("answers what zod answers for Proxmox's usual shape: the fields read, template as a boolean", () => {
    const data = [
      {
        id: 'qemu/100',
        type: 'qemu',
        vmid: 100,
        node: 'pve',
        name: 'a',
        status: 'running',
        template: 0,
        cpu: 0.1,
        tags: '',
      },
      { id: 'lxc/101', type: 'lxc', vmid: 101, node: 'pve', status: 'stopped', template: 1 },
      { type: 'qemu', vmid: 102, template: true },
      { id: 'storage/pve/local', type: 'storage' },
    ];
    const plain = plainResources(data);
    expect(plain).not.toBeNull();
    expect(plain).toStrictEqual(resourcesSchema.parse(data));
  });

  it('leaves every other shape to zod (null)', () => {
    for (const entry of [
      { type: 'qemu', vmid: '100' },
      { type: 'qemu', vmid: 100, name: 42 },
      { type: 'qemu', vmid: 100, template: '1' },
      { type: 'qemu', vmid: 100, node: null },
      { type: 'qemu', vmid: 100.5 },
      { vmid: 100 },
      null,
      [],
    ]) {
      expect(plainResources([entry]), JSON.stringify(entry)).toBeNull();
    }
    expect(plainResources({ data: [] })).toBeNull();
  });
});

//go:build ignore

// lvwatch's write watcher: one event when a write to a watched block device ends
// past the device's threshold. It runs at block_bio_queue, which fires in the
// submitter's context for every bio, device-mapper LVs included, in one of two
// ways: a BTF raw tracepoint (lvw_bio_btf) that reads the bio itself, or, on
// kernels without BTF, the classic tracepoint (lvw_bio_queue) that reads the
// record the kernel fills for it. Both see the same bios and raise the same events.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define LVW_MAX_DEVICES 4096

// The block_bio_queue record up to the first bytes of rwbs. This prefix is the same
// from 5.10 through 6.x (later kernels widened rwbs and moved comm after it), so the
// program needs neither BTF nor CO-RE; Open checks it against tracefs. The ctx may
// not be read below offset 8. (The compare-and-swap below needs 5.12.)
struct lvw_bio_rec {
	__u64 common;
	__u32 dev; // the kernel's dev_t: major << 20 | minor
	__u32 pad;
	__u64 sector;
	__u32 nr_sector;
	char rwbs[8];
};

// What a watched device is armed with. An entry stays after its crossing; whether it
// is still armed is its cookie's presence in lvw_armed.
struct lvw_arm {
	__u64 threshold; // sectors: a write ending beyond this crosses
	__u64 cookie;    // names this arming; unique for the life of the pins
	// The agent's own, unread here:
	__u64 diskseq; // the device's diskseq when armed, to tell a reused dev_t apart
	__u64 ceiling; // sectors: the highest threshold armed since lvw_high[dev] was reset
};

struct lvw_event {
	__u64 cookie;
	__u64 sector;    // the crossing write's first sector
	__u64 threshold; // sectors, as armed
	__u64 ktime_ns;  // CLOCK_MONOTONIC when the write was queued
	__u32 dev;
	__u32 nr_sector;
	__u32 pid; // tgid of the writer
	__u32 tid;
	char comm[16];
};

// Keeps the event type in BTF, for bpf2go to generate its Go twin.
const struct lvw_event *lvw_unused_event __attribute__((unused));

struct lvw_counters {
	__u64 bios;      // bios of any kind on watched devices
	__u64 crossings; // events emitted
	__u64 lost;      // crossings that found the ring full (the device stays armed)
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LVW_MAX_DEVICES);
	__type(key, __u32); // dev_t
	__type(value, struct lvw_arm);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lvw_watch SEC(".maps");

// The set of armed cookies. Deleting a cookie is atomic and succeeds once, so of all
// writers that race past a threshold exactly one emits; keying by cookie rather than
// device keeps a late writer from disarming a newer arming of the same device.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LVW_MAX_DEVICES);
	__type(key, __u64); // cookie
	__type(value, __u32); // dev_t, for bpftool readers
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lvw_armed SEC(".maps");

// The gate: for each hashed device number, one watched device and a lower bound of
// its threshold, in one 64-bit word that the agent stores atomically through mmap.
// A bio on that device that ends below the bound is dismissed with one load, and a
// bio on a device whose slot is empty is not watched; only the rest (writes near or
// past a threshold, devices that share a slot) look up lvw_watch. The agent keeps
// two rules: a slot is empty only when no watched device hashes to it, and a bound
// is never above its device's threshold.
#define LVW_GATE_SLOTS 4096
struct lvw_slot {
	__u32 dev;   // dev_t, 0 when empty (no block device is 0:0)
	__u32 bound; // 4 KiB units
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, LVW_GATE_SLOTS);
	__type(key, __u32);
	__type(value, struct lvw_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lvw_gate SEC(".maps");

// The highest end (in sectors) of a write to a watched device that got past the
// gate, armed or not. Only the program writes it, so the agent's updates of
// lvw_watch never race with it; the agent reads it when it arms again, to learn
// whether writes went past the new threshold while no arming could see them.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LVW_MAX_DEVICES);
	__type(key, __u32);   // dev_t
	__type(value, __u64); // sectors
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lvw_high SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lvw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lvw_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lvw_stats SEC(".maps");

// Whether rwbs (blk_fill_rwbs; its first two letters, little-endian) names a write
// that moves the end of the used area: W, or N with data (write-zeroes). A leading
// F is a preflush, not the operation.
static __always_inline int lvw_rwbs_writes(__u16 rwbs, __u32 nr_sector)
{
	char c0 = rwbs & 0xff, c1 = rwbs >> 8;
	char op = c0;

	if (c0 == 'F' && (c1 == 'W' || c1 == 'N' || c1 == 'R' || c1 == 'D' || c1 == 'F'))
		op = c1;
	return nr_sector > 0 && (op == 'W' || op == 'N');
}

// The kernel's types, as far as the BTF program reads them; CO-RE relocates each
// field and enumerator to the running kernel's.
struct gendisk {
	int major;
	int first_minor;
} __attribute__((preserve_access_index));

struct block_device {
	struct gendisk *bd_disk;
} __attribute__((preserve_access_index));

struct bvec_iter {
	__u64 bi_sector;
	__u32 bi_size;
} __attribute__((preserve_access_index));

struct bio {
	struct block_device *bi_bdev;
	__u32 bi_opf;
	struct bvec_iter bi_iter;
} __attribute__((preserve_access_index));

// The classic tracepoint's record, for the width of its rwbs alone.
struct trace_event_raw_block_bio {
	char rwbs[8];
} __attribute__((preserve_access_index));

enum req_op {
	REQ_OP_READ,
	REQ_OP_WRITE,
	REQ_OP_FLUSH,
	REQ_OP_DISCARD,
	REQ_OP_SECURE_ERASE,
	REQ_OP_ZONE_APPEND,
	REQ_OP_ZONE_OPEN,
	REQ_OP_ZONE_CLOSE,
	REQ_OP_ZONE_FINISH,
	REQ_OP_ZONE_RESET,
	REQ_OP_ZONE_RESET_ALL,
};

enum req_flag_bits {
	__REQ_FAILFAST_DEV, // the first flag: the bits below it hold the operation
};

#define LVW_OP(name) bpf_core_enum_value(enum req_op, name)

// Whether opf is an operation that lvw_rwbs_writes counts, as this kernel's
// blk_fill_rwbs names it: every operation is N but those it names otherwise, and
// of those only W is a write. The kernel that widened rwbs to 10 bytes also
// named the zone operations (Z...), which were N before; zone append carries
// data, so it counts as a write exactly where rwbs says N for it.
static __always_inline int lvw_opf_writes(__u32 opf, __u32 nr_sector)
{
	__u32 op = opf & ((1U << bpf_core_enum_value(enum req_flag_bits, __REQ_FAILFAST_DEV)) - 1);

	if (nr_sector == 0 || op == LVW_OP(REQ_OP_READ) || op == LVW_OP(REQ_OP_FLUSH) ||
	    op == LVW_OP(REQ_OP_DISCARD) || op == LVW_OP(REQ_OP_SECURE_ERASE))
		return 0;
	if (bpf_core_field_size(struct trace_event_raw_block_bio, rwbs) >= 10 &&
	    (op == LVW_OP(REQ_OP_ZONE_APPEND) || op == LVW_OP(REQ_OP_ZONE_OPEN) ||
	     op == LVW_OP(REQ_OP_ZONE_CLOSE) || op == LVW_OP(REQ_OP_ZONE_FINISH) ||
	     op == LVW_OP(REQ_OP_ZONE_RESET) || op == LVW_OP(REQ_OP_ZONE_RESET_ALL)))
		return 0;
	return 1;
}

// lvw_raise_high makes lvw_high[dev] at least end. Writers on other CPUs may race:
// compare-and-swap keeps the highest. Each failed try means another CPU raised the
// value, so as many tries as CPUs can race are enough; past 64 the value is still
// the highest but one.
static __always_inline void lvw_raise_high(__u32 dev, __u64 end)
{
	__u64 *high = bpf_map_lookup_elem(&lvw_high, &dev);
	if (!high) {
		if (!bpf_map_update_elem(&lvw_high, &dev, &end, BPF_NOEXIST))
			return;
		high = bpf_map_lookup_elem(&lvw_high, &dev); // another CPU made it first
		if (!high)
			return;
	}
	for (int i = 0; i < 64; i++) {
		__u64 cur = *(volatile __u64 *)high;
		if (end <= cur || __sync_val_compare_and_swap(high, cur, end) == cur)
			return;
	}
}

// How a program read the bio's operation: the record's rwbs, or the bio's bi_opf.
enum lvw_op_source { LVW_RWBS, LVW_OPF };

// lvw_bio is the watcher's logic for one bio, whichever program read it. The
// operation is decoded only for a bio past the gate.
static __always_inline void lvw_bio(__u32 dev, __u64 sector, __u32 nr_sector, __u32 op, enum lvw_op_source source)
{
	// The same fold of dev_t as gateSlot in Go: the minor's low bits stay apart.
	__u32 slot = (dev ^ (dev >> 12)) & (LVW_GATE_SLOTS - 1);
	struct lvw_slot *gate = bpf_map_lookup_elem(&lvw_gate, &slot);
	if (!gate)
		return;
	__u64 word = *(volatile __u64 *)gate; // dev and bound from one store
	__u32 gate_dev = word;
	if (!gate_dev)
		return;

	__u32 zero = 0;
	struct lvw_counters *cnt = bpf_map_lookup_elem(&lvw_stats, &zero);
	__u64 end = sector + nr_sector;
	if (gate_dev == dev) {
		if (cnt)
			cnt->bios++;
		if (end <= (word >> 32) * 8)
			return;
	}

	struct lvw_arm *arm = bpf_map_lookup_elem(&lvw_watch, &dev);
	if (!arm)
		return;
	if (cnt && gate_dev != dev)
		cnt->bios++;
	if (!(source == LVW_RWBS ? lvw_rwbs_writes(op, nr_sector) : lvw_opf_writes(op, nr_sector)))
		return;
	lvw_raise_high(dev, end);
	if (end <= arm->threshold)
		return;
	__u64 cookie = arm->cookie;
	__u64 threshold = arm->threshold;
	if (!bpf_map_lookup_elem(&lvw_armed, &cookie))
		return; // crossed before, not re-armed yet

	// Reserve before disarming: with the ring full the device stays armed and the
	// next write past the threshold reports the crossing.
	struct lvw_event *ev = bpf_ringbuf_reserve(&lvw_events, sizeof(*ev), 0);
	if (!ev) {
		if (cnt)
			cnt->lost++;
		return;
	}
	if (bpf_map_delete_elem(&lvw_armed, &cookie)) {
		bpf_ringbuf_discard(ev, 0); // another writer disarmed it first
		return;
	}

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	ev->cookie = cookie;
	ev->sector = sector;
	ev->threshold = threshold;
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->dev = dev;
	ev->nr_sector = nr_sector;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
	if (cnt)
		cnt->crossings++;
}

// The BTF raw tracepoint: the bio as the tracepoint gets it, before any remapping,
// so an LV's bio carries the LV's device and sectors. The record's dev is
// bio_dev(): the whole disk's number (a partition's bios count on its disk, at
// disk sectors), MKDEV(major, first_minor); its nr_sector, bio_sectors().
SEC("tp_btf/block_bio_queue")
int lvw_bio_btf(__u64 *ctx)
{
	struct bio *bio = (struct bio *)ctx[0];
	struct gendisk *disk = bio->bi_bdev->bd_disk;

	lvw_bio((__u32)disk->major << 20 | disk->first_minor, bio->bi_iter.bi_sector, bio->bi_iter.bi_size >> 9,
		bio->bi_opf, LVW_OPF);
	return 0;
}

// The classic tracepoint, where the kernel has no BTF. It returns 1: a tracepoint
// program's 0 drops the event for every perf user of the tracepoint (perf stat,
// perf record), which would blind the operator's own block tracing.
SEC("tracepoint/block/block_bio_queue")
int lvw_bio_queue(struct lvw_bio_rec *rec)
{
	lvw_bio(rec->dev, rec->sector, rec->nr_sector, *(__u16 *)rec->rwbs, LVW_RWBS);
	return 1;
}

// Twins of the two programs for BPF_PROG_TEST_RUN, which runs neither tracepoint
// program type. Never attached. Each takes what its program reads: dev, sector,
// then nr_sector and rwbs (8 bytes, little-endian) for the record, bi_size and
// bi_opf for the bio.
SEC("raw_tp")
int lvw_test_rec(struct bpf_raw_tracepoint_args *ctx)
{
	lvw_bio(ctx->args[0], ctx->args[1], ctx->args[2], ctx->args[3], LVW_RWBS);
	return 0;
}

SEC("raw_tp")
int lvw_test_bio(struct bpf_raw_tracepoint_args *ctx)
{
	lvw_bio(ctx->args[0], ctx->args[1], (__u32)ctx->args[2] >> 9, ctx->args[3], LVW_OPF);
	return 0;
}

// An empty BTF raw tracepoint program, for BenchmarkProbeCost: what the kernel's
// dispatch to any program costs a bio. Never attached by the watcher.
SEC("tp_btf/block_bio_queue")
int lvw_test_empty(__u64 *ctx)
{
	return 0;
}

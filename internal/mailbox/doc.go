// Package mailbox is the storage mailbox of oVirt vdsm, byte for byte
// (design/mailbox-format.md): hosts ask the Storage Pool Manager for bigger volumes
// through two volumes on shared storage, and lvwatch hosts and SPMs work with vdsm ones.
//
// A Host (OpenHost) writes extend requests into its 4 KiB mailbox in the inbox, then
// the events block, and polls its reply mailbox in the outbox only while requests are
// in flight, every 200 µs at first and then every 1/8 of the time it has waited. Extend
// may be called from many goroutines: up to 63 requests are in flight, identical ones
// share a slot, and each reply is acknowledged with vdsm's CLEAN handshake. A request
// whose callers all gave up is withdrawn once it is AbandonAfter old (default 2 min).
// The host marks its mailbox with its process's identity in the reserved slot 63, which
// vdsm never reads, and at start refuses a mailbox holding another writer's requests.
//
// The SPM (OpenSPM) reads the events block every millisecond after a mailbox changed,
// backing off in proportion to the quiet time to every 100 ms when idle, and all 250
// mailboxes every 2 s for hosts that write no events; on those periodic scans it also
// reads the outbox back and writes again what someone else overwrote. It acts only on
// slots that changed in a mailbox whose checksum holds, hands extend requests to a
// Handler (at most MaxHandling unanswered at once) that may answer later, and writes the
// replies. A Host in the SPM's process (SPM.AddLocal) wakes it at once, and is woken by
// its replies, while the bytes still go through the volumes.
//
// Volumes opened for writing must not carry a known signature (an LVM2 label, a
// partition table, a file system) unless forced. All I/O is O_DIRECT in aligned 4 KiB
// blocks; I/O errors are logged and retried with backoff.
package mailbox

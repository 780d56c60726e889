/*
 * pveoi-load: tiny interrupt generators for the PV EOI guest.
 *
 * Built at image build time with `gcc -O2 -static` (no runtime dependencies).
 *
 *   pveoi-load timer COUNT USEC
 *       COUNT relative clock_nanosleep(CLOCK_MONOTONIC) sleeps of USEC
 *       microseconds: each one arms the LAPIC timer (hrtimer), so each one
 *       is a timer interrupt and its EOI.
 *       Prints: timer count=N usec=U elapsed_ns=E
 *
 *   pveoi-load ipi COUNT
 *       Two threads pinned to CPU 0 and CPU 1 ping-pong COUNT round trips
 *       through a futex. Each hop wakes a thread sleeping on the other CPU,
 *       i.e. a cross-CPU wakeup (an IPI and its EOI; on 6.1 mostly a call-function IPI, CAL).
 *       Prints: ipi count=N elapsed_ns=E
 *
 * Exit status: 0 ok, 1 runtime error, 2 bad arguments (usage printed),
 * 3 the machine cannot run this load (fewer than 2 usable CPUs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_NO_CPUS 3
#define MAX_COUNT 1000000000UL
#define MAX_USEC 10000000UL

static const char *prog = "pveoi-load";

static void usage(void)
{
	fprintf(stderr,
		"usage: %s timer COUNT USEC | %s ipi COUNT\n"
		"  COUNT 1..%lu, USEC 0..%lu\n",
		prog, prog, MAX_COUNT, MAX_USEC);
}

/* Parse a decimal in [lo, hi]; 0 on success, -1 on anything else. */
static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
	char *end;
	unsigned long v;

	if (s == NULL || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int run_timer(unsigned long count, unsigned long usec)
{
	long long start, elapsed;
	unsigned long i;

	start = now_ns();
	for (i = 0; i < count; i++) {
		struct timespec req = {
			.tv_sec = (time_t)(usec / 1000000UL),
			.tv_nsec = (long)(usec % 1000000UL) * 1000L,
		};
		struct timespec rem;
		int rc;

		while ((rc = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem)) == EINTR)
			req = rem;
		if (rc != 0) {
			fprintf(stderr, "%s: clock_nanosleep: %s\n", prog, strerror(rc));
			return 1;
		}
	}
	elapsed = now_ns() - start;
	printf("timer count=%lu usec=%lu elapsed_ns=%lld\n", count, usec, elapsed);
	return 0;
}

/* ---------------------------------------------------------------- ipi */

/* Whose turn it is: 0 = the CPU 0 thread, 1 = the CPU 1 thread, 2 = stop. */
static _Atomic int turn;
static _Atomic int partner_ready;
static unsigned long ipi_count;

static long futex(_Atomic int *addr, int op, int val)
{
	return syscall(SYS_futex, (int *)addr, op, val, NULL, NULL, 0);
}

/* Sleep (never spin) until *addr != val. */
static void wait_while(_Atomic int *addr, int val)
{
	while (atomic_load_explicit(addr, memory_order_acquire) == val) {
		if (futex(addr, FUTEX_WAIT_PRIVATE, val) == -1 && errno != EAGAIN && errno != EINTR) {
			perror("pveoi-load: futex wait");
			exit(1);
		}
	}
}

static void hand_over(_Atomic int *addr, int val)
{
	atomic_store_explicit(addr, val, memory_order_release);
	if (futex(addr, FUTEX_WAKE_PRIVATE, 1) == -1) {
		perror("pveoi-load: futex wake");
		exit(1);
	}
}

static int pin_self(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set); /* 0 = the calling thread */
}

static void *partner(void *arg)
{
	(void)arg;
	if (pin_self(1) != 0) {
		fprintf(stderr, "%s: cannot pin a thread to CPU 1: %s; ipi needs CPUs 0 and 1\n",
			prog, strerror(errno));
		exit(EXIT_NO_CPUS);
	}
	hand_over(&partner_ready, 1);
	for (;;) {
		wait_while(&turn, 0);
		if (atomic_load_explicit(&turn, memory_order_acquire) == 2)
			return NULL;
		hand_over(&turn, 0);
	}
}

static int run_ipi(unsigned long count)
{
	long online = sysconf(_SC_NPROCESSORS_ONLN);
	long long start, elapsed;
	pthread_t thread;
	unsigned long i;
	int rc;

	if (online < 2) {
		fprintf(stderr, "%s: ipi needs 2 online CPUs, this machine has %ld; boot the guest with -smp 2 or more\n",
			prog, online);
		return EXIT_NO_CPUS;
	}
	if (pin_self(0) != 0) {
		fprintf(stderr, "%s: cannot pin to CPU 0: %s; ipi needs CPUs 0 and 1\n", prog, strerror(errno));
		return EXIT_NO_CPUS;
	}
	ipi_count = count;
	atomic_store(&turn, 0);
	rc = pthread_create(&thread, NULL, partner, NULL);
	if (rc != 0) {
		fprintf(stderr, "%s: pthread_create: %s\n", prog, strerror(rc));
		return 1;
	}
	wait_while(&partner_ready, 0);

	start = now_ns();
	for (i = 0; i < ipi_count; i++) {
		hand_over(&turn, 1); /* wake the CPU 1 thread ... */
		wait_while(&turn, 1); /* ... and sleep until it wakes us back */
	}
	elapsed = now_ns() - start;

	hand_over(&turn, 2);
	pthread_join(thread, NULL);
	printf("ipi count=%lu elapsed_ns=%lld\n", count, elapsed);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned long count, usec;

	if (argc >= 2 && strcmp(argv[1], "timer") == 0 && argc == 4 &&
	    parse_ulong(argv[2], 1, MAX_COUNT, &count) == 0 &&
	    parse_ulong(argv[3], 0, MAX_USEC, &usec) == 0)
		return run_timer(count, usec);
	if (argc >= 2 && strcmp(argv[1], "ipi") == 0 && argc == 3 &&
	    parse_ulong(argv[2], 1, MAX_COUNT, &count) == 0)
		return run_ipi(count);
	usage();
	return EXIT_USAGE;
}

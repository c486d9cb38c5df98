#!/usr/bin/env perl
# migrate.pl - live-migrate a QEMU guest to a QEMU waiting with -incoming,
# through both QMP monitors, and report what the guest went through.
#
# Usage: qemu/migrate.pl [--converge-after FILE REGEX] SOURCE_QMP DESTINATION_QMP URI [TIMEOUT_S]
#   SOURCE_QMP, DESTINATION_QMP  the QMP sockets (run-vm.sh --qmp)
#   URI                          where the destination listens (unix:PATH)
#   --converge-after FILE REGEX  keep copying RAM while the guest runs (no
#                                switch-over: 64 MiB/s and a 1 ms downtime
#                                limit) until FILE has one more line matching
#                                REGEX than at the start, then let the
#                                migration finish (1 GiB/s, 300 ms)
# Sets the bandwidth limit to 1 GiB/s (QEMU's default, 32 MiB/s, is meant for
# networks, not one host), migrates, waits for the source to report
# "completed" and the destination to resume the guest, then quits the source
# QEMU. Prints one line of key=value:
#   status, total_ms and qemu_downtime_ms (QEMU's own figures), ram_mib,
#   first_pass_ms (--converge-after: when QEMU's first pass over the RAM ended),
#   stop_at and resume_at (the source's STOP and the destination's RESUME
#   events, seconds since the epoch with microseconds: the guest's pause as
#   the two QEMUs saw it).
# Exit 0 when the guest resumed on the destination, 1 otherwise.
use strict;
use warnings;
use IO::Select;
use IO::Socket::UNIX;
use JSON::PP;
use Time::HiRes qw(time);

my ($hold_file, $hold_regex);
if (@ARGV && $ARGV[0] eq '--converge-after') {
  (undef, $hold_file, $hold_regex) = splice(@ARGV, 0, 3);
}
my ($src_path, $dst_path, $uri, $timeout) = @ARGV;
die "usage: $0 [--converge-after FILE REGEX] SOURCE_QMP DESTINATION_QMP URI [TIMEOUT_S]\n" unless defined $uri;
$timeout //= 300;
my $json = JSON::PP->new->canonical;
$SIG{PIPE} = 'IGNORE';    # a QEMU that went away is an error message, not a silent death
my %events;    # "src STOP" => timestamp

# A QMP connection: the greeting read and capabilities negotiated.
sub connect_qmp {
  my ($name, $path) = @_;
  my $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path)
    or die "$name: cannot connect to $path: $!\n";
  my $conn = { name => $name, sock => $sock, buf => '' };
  read_message($conn, 10);    # greeting
  command($conn, 'qmp_capabilities');
  return $conn;
}

# The next message from $conn (events are recorded on the way), or die.
sub read_message {
  my ($conn, $limit) = @_;
  my $deadline = time + $limit;
  while (1) {
    if ($conn->{buf} =~ s/^([^\n]*)\n//) {
      my $line = $1;
      next if $line =~ /^\s*$/;
      my $msg = $json->decode($line);
      if (exists $msg->{event}) {
        my $ts = $msg->{timestamp};
        $events{"$conn->{name} $msg->{event}"} //= sprintf('%d.%06d', $ts->{seconds}, $ts->{microseconds});
      }
      return $msg;
    }
    my $left = $deadline - time;
    die "$conn->{name}: no answer from QEMU within ${limit}s\n" if $left <= 0;
    IO::Select->new($conn->{sock})->can_read($left) or next;
    my $n = sysread($conn->{sock}, my $chunk, 65536);
    die "$conn->{name}: QMP connection closed\n" unless $n;
    $conn->{buf} .= $chunk;
  }
}

# Runs one QMP command; returns its "return" value, dies on an error.
sub command {
  my ($conn, $execute, $arguments) = @_;
  my $request = { execute => $execute };
  $request->{arguments} = $arguments if $arguments;
  syswrite($conn->{sock}, $json->encode($request) . "\n") or die "$conn->{name}: write: $!\n";
  while (1) {
    my $msg = read_message($conn, 30);
    next if exists $msg->{event};
    die "$conn->{name}: $execute: $msg->{error}{desc}\n" if exists $msg->{error};
    return $msg->{return} if exists $msg->{return};
  }
}

# Reads whatever events are pending on $conn, for up to $wait seconds.
sub drain_events {
  my ($conn, $wait) = @_;
  my $deadline = time + $wait;
  while ((my $left = $deadline - time) > 0) {
    last unless IO::Select->new($conn->{sock})->can_read($left) || $conn->{buf} =~ /\n/;
    if ($conn->{buf} !~ /\n/) {
      my $n = sysread($conn->{sock}, my $chunk, 65536);
      return unless $n;
      $conn->{buf} .= $chunk;
    }
    read_message($conn, 1);
  }
}

# Lines of $hold_file matching $hold_regex.
sub hold_lines {
  open(my $fh, '<', $hold_file) or return 0;
  my $n = grep { /$hold_regex/ } <$fh>;
  close($fh);
  return $n;
}

my $src = connect_qmp('src', $src_path);
my $dst = connect_qmp('dst', $dst_path);
my $held = defined $hold_file ? hold_lines() : undef;
# Holding: QEMU (10 here) switches over as soon as what it has left to send
# fits in bandwidth x downtime limit, even with a limit of 0 once a pass has
# sent everything it knew of, and on a local socket its bandwidth is gigabytes
# per second: a guest dirtying a few MiB is done in one go. So the hold copies
# at 64 MiB/s (the first pass over the RAM takes seconds) with a 1 ms limit
# (64 KiB left): whatever the guest dirties is more, and QEMU goes on copying.
command($src, 'migrate-set-parameters', defined $held
  ? { 'max-bandwidth' => 64 << 20, 'downtime-limit' => 1 }
  : { 'max-bandwidth' => 1 << 30, 'downtime-limit' => 300 });
command($src, 'migrate', { uri => $uri });

my $started = time;
my $first_pass_ms = '-';    # --converge-after: when QEMU's first pass over the RAM ended
my $deadline = time + $timeout;
my $info;
while (1) {
  $info = command($src, 'query-migrate');
  my $status = $info->{status} // 'none';
  last if $status eq 'completed' || $status eq 'failed' || $status eq 'cancelled';
  die "migration still '$status' after ${timeout}s\n" if time > $deadline;
  if (defined $held && $first_pass_ms eq '-' && ($info->{ram}{'dirty-sync-count'} // 0) >= 2) {
    $first_pass_ms = int((time - $started) * 1000);
  }
  if (defined $held && hold_lines() > $held) {
    command($src, 'migrate-set-parameters', { 'max-bandwidth' => 1 << 30, 'downtime-limit' => 300 });
    $held = undef;
  }
  drain_events($dst, 0.05);
}
# The destination resumes the guest once it has loaded the last state.
while (!exists $events{'dst RESUME'} && time < $deadline) {
  drain_events($dst, 0.1);
}
drain_events($src, 0.1);
my $status = $info->{status};
my $resumed = exists $events{'dst RESUME'};
if ($resumed) {
  my $run = command($dst, 'query-status');
  $resumed = $run->{status} eq 'running';
}
eval { command($src, 'quit') } if $status eq 'completed';

my %line = (
  status => $status,
  total_ms => $info->{'total-time'} // '-',
  qemu_downtime_ms => $info->{downtime} // '-',
  ram_mib => int(($info->{ram}{transferred} // 0) / 1048576),
  first_pass_ms => $first_pass_ms,
  stop_at => $events{'src STOP'} // '-',
  resume_at => $events{'dst RESUME'} // '-',
  resumed => $resumed ? 'yes' : 'no',
);
print join(' ', map { "$_=$line{$_}" } qw(status total_ms qemu_downtime_ms ram_mib first_pass_ms stop_at resume_at resumed)), "\n";
exit($status eq 'completed' && $resumed ? 0 : 1);

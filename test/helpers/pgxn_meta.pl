#!/usr/bin/perl
# Check a PGXN META.json against the PGXN Meta Spec 1.0.0
# (https://pgxn.org/spec/) and against the tree it describes: the required
# keys and their types, semantic versions, a known license, prereqs phases
# and relations, every provides file present; and that its versions agree
# with the control file's default_version, debian/changelog and
# CHANGELOG.md.  Usage: pgxn_meta.pl [DIR] (default: the tree it is in).
# Prints each problem; exits 1 if there is one.
use strict;
use warnings;
use FindBin;
use JSON::PP;

my $dir = shift // "$FindBin::RealBin/../..";
my @problems;
sub problem { push @problems, join('', @_); }

open(my $fh, '<', "$dir/META.json") or die "cannot open $dir/META.json: $!";
my $meta = eval { JSON::PP->new->utf8->decode(do { local $/; <$fh> }) };
close $fh;
die "META.json is not JSON: $@" unless $meta;

my $semver = qr/^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z-]+)?$/;
my %licenses = map { $_ => 1 } qw(agpl_3 apache_1_1 apache_2_0 artistic_1 artistic_2 bsd
  freebsd gfdl_1_2 gfdl_1_3 gpl_1 gpl_2 gpl_3 lgpl_2_1 lgpl_3_0 mit mozilla_1_0 mozilla_1_1
  openssl perl_5 postgresql qpl_1_0 ssleay sun zlib open_source restricted unrestricted unknown);

# required keys
for my $k (qw(name version abstract maintainer license provides meta-spec))
{
	problem("missing required key $k") unless exists $meta->{$k};
}
problem("name must be 2+ characters without / \\ or spaces")
  unless ($meta->{name} // '') =~ m{^[^/\\\s]{2,}$};
problem("version $meta->{version} is not a semantic version")
  unless ($meta->{version} // '') =~ $semver;
problem("abstract must be a non-empty string") unless ($meta->{abstract} // '') ne '';
my $m = $meta->{maintainer};
problem("maintainer must be a string or a list of strings")
  unless defined $m && (!ref $m || (ref $m eq 'ARRAY' && @$m && !grep { ref } @$m));
my $l = $meta->{license};
for my $lic (ref $l eq 'ARRAY' ? @$l : ref $l eq 'HASH' ? () : ($l // ''))
{
	problem("license $lic is not one of the spec's") unless $licenses{$lic};
}
problem("meta-spec version must be 1.0.0")
  unless ref $meta->{'meta-spec'} eq 'HASH' && ($meta->{'meta-spec'}{version} // '') eq '1.0.0';

# provides: each extension with an existing file and a semantic version
my $p = $meta->{provides};
if (ref $p ne 'HASH' || !%$p)
{
	problem("provides must name at least one extension");
	$p = {};
}
for my $ext (sort keys %$p)
{
	my $e = $p->{$ext};
	problem("provides.$ext needs file and version"), next
	  unless ref $e eq 'HASH' && $e->{file} && $e->{version};
	problem("provides.$ext.version $e->{version} is not a semantic version")
	  unless $e->{version} =~ $semver;
	problem("provides.$ext.file $e->{file} does not exist") unless -f "$dir/$e->{file}";
	problem("provides.$ext.docfile $e->{docfile} does not exist")
	  if $e->{docfile} && !-f "$dir/$e->{docfile}";
}

# prereqs: phases of relations of versions
my %phases = map { $_ => 1 } qw(configure build test runtime develop);
my %relations = map { $_ => 1 } qw(requires recommends suggests conflicts);
for my $phase (sort keys %{ $meta->{prereqs} // {} })
{
	problem("prereqs phase $phase is not one of the spec's") unless $phases{$phase};
	for my $rel (sort keys %{ $meta->{prereqs}{$phase} })
	{
		problem("prereqs.$phase relation $rel is not one of the spec's") unless $relations{$rel};
		for my $dep (sort keys %{ $meta->{prereqs}{$phase}{$rel} })
		{
			my $v = $meta->{prereqs}{$phase}{$rel}{$dep};
			problem("prereqs.$phase.$rel.$dep $v is not a version or a range")
			  unless $v =~ /^(0|(([<>]=?|==|!=)\s*)?\d+(\.\d+){0,2}(\s*,\s*([<>]=?|==|!=)\s*\d+(\.\d+){0,2})*)$/;
		}
	}
}
for my $k (qw(resources release_status tags no_index generated_by description prereqs))
{
	next unless exists $meta->{$k};
	problem("release_status must be stable, testing or unstable")
	  if $k eq 'release_status' && $meta->{$k} !~ /^(stable|testing|unstable)$/;
	problem("tags must be a list of strings")
	  if $k eq 'tags' && (ref $meta->{$k} ne 'ARRAY' || grep { ref || length > 255 } @{ $meta->{$k} });
}

# the versions of the tree
my $control = do { local (@ARGV, $/) = ("$dir/$meta->{name}.control"); <> } // '';
my ($default) = $control =~ /^default_version\s*=\s*'([^']+)'/m;
problem("$meta->{name}.control has no default_version") unless $default;
if ($default)
{
	problem("META.json version $meta->{version} differs from the control file's $default")
	  unless $meta->{version} eq $default;
	my $e = $p->{ $meta->{name} };
	problem("provides.$meta->{name}.version $e->{version} differs from the control file's $default")
	  if $e && $e->{version} ne $default;
	problem("no install path to $default: sql/$meta->{name}--$default.sql or an update script to it")
	  unless -f "$dir/sql/$meta->{name}--$default.sql" || glob("$dir/sql/$meta->{name}--*--$default.sql");
	if (-f "$dir/debian/changelog")
	{
		my $deb = do { local (@ARGV, $/) = ("$dir/debian/changelog"); <> };
		my ($dv) = $deb =~ /^\S+ \(([^)]+)\)/;
		$dv =~ s/-[^-]+$// if defined $dv;    # Debian revision
		problem("debian/changelog is at $dv, the control file at $default")
		  unless defined $dv && $dv eq $default;
	}
	my $cl = do { local (@ARGV, $/) = ("$dir/CHANGELOG.md"); <> } // '';
	problem("CHANGELOG.md has no entry for $default") unless $cl =~ /^## \Q$default\E\b/m;
}

print "$_\n" for @problems;
print "META.json: ok (version $meta->{version})\n" unless @problems;
exit(@problems ? 1 : 0);

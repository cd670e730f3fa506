# Local stand-in for apache/beam_python3.11_sdk, built by images/build.sh only where no registry can be reached.
# Its boot is a stand-in for Beam's boot program that starts an SDK worker as boot does (the tests play Dataflow's
# worker contract with it) but installs no staged packages: an image built with it is not a Dataflow SDK container.
FROM scratch
COPY boot /opt/apache/beam/boot

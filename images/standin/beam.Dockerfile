# Local stand-in for apache/beam_python3.11_sdk, built by images/build.sh only where no registry can be reached.
# It holds a placeholder where Beam's boot program belongs, so the components image still builds and runs KFP
# steps (KFP replaces the entrypoint); an image built with it must not be used as a Dataflow SDK container.
FROM scratch
COPY boot /opt/apache/beam/boot

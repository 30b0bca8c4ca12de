#!/usr/bin/env bash
# Pre-renders the test content once: 120 s of H.264 + AAC in fMP4, two renditions (480 and
# 150 kbit/s video), 2 s segments, as an HLS VOD (playlists per rendition + master) and a DASH
# static MPD. The origin (origin.mjs) publishes these segments on a wall-clock schedule as
# *live* streams, which costs no encoder CPU while the browsers play.
# Usage: content.sh OUT_DIR (does nothing when OUT_DIR/.complete exists).
set -euo pipefail
out=${1:?usage: content.sh OUT_DIR}
[[ -f "$out/.complete" ]] && exit 0
rm -rf "$out" && mkdir -p "$out/hls" "$out/dash"
src=(-f lavfi -i "testsrc2=size=320x180:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 120)
video=(-c:v libx264 -preset ultrafast -pix_fmt yuv420p -g 50 -keyint_min 50 -sc_threshold 0)
(
  cd "$out/hls"
  ffmpeg -hide_banner -loglevel error "${src[@]}" \
    -filter_complex "[0:v]split=2[v1][v2];[v2]scale=160:90[v2o]" -map "[v1]" -map "[v2o]" -map 1:a -map 1:a \
    "${video[@]}" -b:v:0 480k -maxrate:v:0 520k -bufsize:v:0 960k -b:v:1 150k -maxrate:v:1 165k -bufsize:v:1 300k \
    -c:a aac -b:a 48k -ac 2 -f hls -hls_time 2 -hls_playlist_type vod -hls_segment_type fmp4 \
    -hls_flags independent_segments -master_pl_name master.m3u8 -var_stream_map "v:0,a:0 v:1,a:1" \
    -hls_segment_filename "stream_%v_%05d.m4s" -hls_fmp4_init_filename "init_%v.mp4" "stream_%v.m3u8"
)
(
  cd "$out/dash"
  ffmpeg -hide_banner -loglevel error "${src[@]}" \
    -map 0:v -map 0:v -map 1:a "${video[@]}" -b:v:0 480k -s:v:0 320x180 -b:v:1 150k -s:v:1 160x90 \
    -c:a aac -b:a 48k -ac 2 -f dash -seg_duration 2 -use_template 1 -use_timeline 0 \
    -adaptation_sets "id=0,streams=v id=1,streams=a" \
    -init_seg_name 'init_$RepresentationID$.mp4' -media_seg_name 'seg_$RepresentationID$_$Number%05d$.m4s' manifest.mpd
)
touch "$out/.complete"

/* A minimal uWebSockets broadcast room, the peer skiff is compared with
 * (skiff issue 34, docs/src/performance.md "Against a uWebSockets peer").
 *
 *   broadcast PORT
 *
 * Listens on 127.0.0.1:PORT; every WebSocket upgrade on any path is accepted and
 * subscribed to one topic; every text message is published to that topic, so every
 * subscriber, the sender included, gets it. No users, no acks, no presence, no history.
 * Build: scripts/uws-peer (skiff repository), which compiles this file. */
#include "App.h"

#include <cstdlib>
#include <iostream>
#include <string_view>

namespace {
constexpr std::string_view ROOM = "room";
uWS::App *app = nullptr;
struct PerSocketData {};
} // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " PORT\n";
        return 2;
    }
    int port = std::atoi(argv[1]);
    uWS::App a;
    app = &a;
    a.ws<PerSocketData>("/*", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 16 * 1024,
        .idleTimeout = 120,
        /* Large enough that a slow reader is never dropped from during a run:
         * the benchmark counts every delivery. */
        .maxBackpressure = 16 * 1024 * 1024,
        .closeOnBackpressureLimit = false,
        .resetIdleTimeoutOnSend = false,
        .sendPingsAutomatically = true,
        .open = [](auto *ws) { ws->subscribe(ROOM); },
        .message = [](auto * /*ws*/, std::string_view message, uWS::OpCode opCode) {
            /* App::publish, unlike WebSocket::publish, includes the sender. */
            if (opCode == uWS::OpCode::TEXT) {
                app->publish(ROOM, message, opCode);
            }
        },
    }).listen("127.0.0.1", port, [port](auto *listen_socket) {
        if (listen_socket) {
            std::cout << "listening on 127.0.0.1:" << port << std::endl;
        } else {
            std::cerr << "cannot listen on 127.0.0.1:" << port << std::endl;
            std::exit(1);
        }
    }).run();
    return 0;
}

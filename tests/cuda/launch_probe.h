#pragma once

#include <string>
#include <vector>

// Fills out[i] = i*i on the device; returns "" on success or the CUDA error string.
std::string run_launch_probe(int n, std::vector<int>& out);
